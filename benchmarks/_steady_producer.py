"""The steady producer of scenario 5, run in its own process so that it shares
neither the consumer's event loop nor its GIL.

    python -m benchmarks._steady_producer BOOTSTRAP TOPIC RATE SECONDS

It connects, writes one warm-up record to each partition (value ``b"warm-up"``)
and prints ``warm``; it then waits for a line on stdin, and produces ``RATE``
records/s for ``SECONDS`` s, paced by a schedule (record ``i`` is due at
``start + i / RATE``, so a late wake-up is caught up, not carried forward), round
robin over the partitions and over 1,000 keys. Each value is the send time,
``time.time_ns()`` as 8 big-endian bytes taken just before ``produce()``, then the
record's number (4 bytes), by which the consumer side tells a record the producer
sent twice (librdkafka retries a produce request that timed out, and the embedded
broker cannot do idempotence) from a lost one. Once every record is acknowledged
it prints one JSON line: the count sent, delivery failures, how late the schedule
ran, and the acknowledgement latencies.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from confluent_kafka import Producer

from ._common import PARTITIONS

WARM_UP = b"warm-up"
KEYS = 1000
LINGER_MS = 1
VALUE_SIZE = 12  # send time (ns, 8 bytes), record number (4 bytes)


def main(bootstrap: str, topic: str, rate: int, seconds: float) -> None:
    failures: list[str] = []
    acks: list[int] = []  # ns from send to acknowledgement, steady records only

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        elif len(msg.value()) == VALUE_SIZE:
            acks.append(time.time_ns() - int.from_bytes(msg.value()[:8], "big"))

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": LINGER_MS, "acks": "all"},
    )
    for partition in range(PARTITIONS):
        producer.produce(topic, WARM_UP, b"warm-up", partition, on_delivery=delivered)
    if producer.flush(60) or failures:
        raise SystemExit(f"warm-up records not delivered: {failures}")
    print("warm", flush=True)
    if not sys.stdin.readline():
        return  # the parent gave up (stdin closed): produce nothing

    total = int(rate * seconds)
    keys = [b"k%d" % i for i in range(KEYS)]
    produce, poll, now_ns, clock = producer.produce, producer.poll, time.time_ns, time.perf_counter
    late = 0.0
    sent = 0
    start = clock()
    while sent < total:
        now = clock()
        late = max(late, now - (start + sent / rate))  # the first record not sent yet
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            try:
                produce(
                    topic,
                    now_ns().to_bytes(8, "big") + sent.to_bytes(4, "big"),
                    keys[sent % KEYS],
                    sent % PARTITIONS,
                    on_delivery=delivered,
                )
            except BufferError:  # librdkafka's queue is full: the broker lags far behind
                poll(0.01)
                continue
            sent += 1
        poll(0)
        pause = start + sent / rate - clock()
        if pause > 0:
            time.sleep(pause)
    elapsed = clock() - start
    remaining = producer.flush(60)
    acks.sort()
    print(
        json.dumps(
            {
                "sent": sent,
                "seconds": elapsed,
                "unacknowledged": remaining,
                "failures": failures[:5],
                "failed": len(failures),
                "max_late_ms": late * 1000,
                "ack_p50_ms": acks[len(acks) // 2] / 1e6 if acks else 0.0,
                "ack_p99_ms": acks[int(len(acks) * 0.99)] / 1e6 if acks else 0.0,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
