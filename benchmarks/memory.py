"""Scenario 3: memory under backpressure; scenario 4: memory with stalled records.

3. A backlog of 200,000 x 1 KiB records; a ConsumerApp (in a child process, so
   that its RSS is its own) whose handler manages about 1,000 records/s, for 30 s.
4. A backlog of 200,000 x 100 B records over 1,000 keys, ``ordering="key"``
   with concurrency 100 and a no-op handler, except that the first record of
   every partition stalls for the whole run (a retry backoff, a slow call): it
   holds its partition's committable offset while the other keys go on, and
   the completion window (``completion_window``) bounds what is remembered.

The parent samples the child's RSS every half second.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio

from asyncconsumer import ConsumerApp, Message

from ._common import PARTITIONS, make_topic, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 200_000
SIZE = 1024
SECONDS = 30.0
MAX_BUFFERED = 1000  # ConsumerApp's default, per partition
FETCH_BYTES = 1024 * 1024
PER_RECORD_DELAY = PARTITIONS / 1000  # 4 partitions x 250/s = about 1,000 records/s


STALLED_RECORDS = 200_000
STALLED_SIZE = 100


async def child(bootstrap: str, topic: str, mode: str = "backpressure") -> None:
    if mode == "stalled":
        await stalled_child(bootstrap, topic)
        return
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=f"bench-mem-{os.getpid()}",
        auto_offset_reset="earliest",
        max_buffered_records=MAX_BUFFERED,
        # Apache Kafka bounds a fetch response to max_partition_fetch_bytes (1 MiB)
        # per partition; the embedded broker ignores that and answers ~5 MiB per
        # partition, but applies fetch_max_bytes per partition: this makes it
        # hold what Kafka would.
        fetch_max_bytes=FETCH_BYTES,
    )
    handled = 0

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        nonlocal handled
        await anyio.sleep(PER_RECORD_DELAY)
        handled += 1

    print(0, flush=True)  # started: the parent takes its baseline now
    async with app:
        while True:
            await anyio.sleep(0.5)
            print(handled, flush=True)


async def stalled_child(bootstrap: str, topic: str) -> None:
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=f"bench-stalled-{os.getpid()}",
        auto_offset_reset="earliest",
        fetch_max_bytes=FETCH_BYTES,
    )
    handled = 0
    stalled: set[tuple[int, int]] = set()

    @app.handler(topic, ordering="key", concurrency=100)
    async def handle(msg: Message[bytes]) -> None:
        nonlocal handled
        if msg.offset == 0:  # the first record of every partition stalls
            stalled.add((msg.partition, msg.offset))
            await anyio.sleep_forever()
        handled += 1

    print(0, flush=True)
    async with app:
        while True:
            await anyio.sleep(0.5)
            print(handled, flush=True)


async def run(
    bootstrap: str, *, records: int = RECORDS, seconds: float = SECONDS, mode: str = "backpressure"
) -> dict[str, object]:
    size = STALLED_SIZE if mode == "stalled" else SIZE
    topic = await make_topic(bootstrap, f"bench-{mode}", records, size=size)
    counts: list[int] = [0]
    samples: list[tuple[float, int]] = []
    async with (
        await anyio.open_process(
            [sys.executable, "-m", "benchmarks.memory", bootstrap, topic, mode],
            cwd=ROOT,
        ) as proc,
        anyio.create_task_group() as tg,
    ):
        first_line = anyio.Event()

        async def read_counts() -> None:
            assert proc.stdout is not None
            async for chunk in proc.stdout:
                counts.extend(int(n) for n in chunk.split())
                first_line.set()

        tg.start_soon(read_counts)
        await first_line.wait()  # the child imported everything and is about to start
        baseline = rss_bytes(proc.pid)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append((elapsed, rss_bytes(proc.pid)))
            await anyio.sleep(0.5)
        proc.terminate()
        await proc.wait()
    peak = max(rss for _, rss in samples)
    settled = [rss for t, rss in samples if t >= seconds / 3]
    bound = PARTITIONS * MAX_BUFFERED * size
    return {
        "mode": mode,
        "records": records,
        "record_size": size,
        "seconds": seconds,
        "handled": counts[-1],
        "baseline_rss": baseline,
        "peak_rss": peak,
        "growth": peak - baseline,
        "allowed_growth": bound * 3 + 50 * 2**20,
        "drift_after_fill": max(settled) - min(settled) if settled else 0,
        "samples": samples,
    }


if __name__ == "__main__":
    anyio.run(child, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "backpressure")
