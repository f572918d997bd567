"""A steady keyed producer built on confluent-kafka (a client we did not write).

Each key has its own sequence number (0, 1, 2, ...), carried as the record's value.
The producer is idempotent with ``acks=all``, so each key's records land in offset
order; every acknowledged record is kept as a :class:`Produced`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from confluent_kafka import Producer

from .policy import POISON_PREFIX


class Produced(NamedTuple):
    """A record the broker acknowledged."""

    topic: str
    partition: int
    offset: int
    key: str
    seq: int
    poison: bool = False  # its value is not JSON (scenario 8)


@dataclass
class SteadyProducer:
    """Produce ``rate`` records/s over ``keys`` keys, in a thread, until :meth:`stop`
    or ``max_seconds``. ``acked`` and ``failed`` fill in as the broker answers."""

    bootstrap: str
    topic: str
    rate: int = 1000
    keys: int = 50
    max_seconds: float = 120.0
    poison_every: int = 0  # every n-th record's value is ``\xff`` + seq: undecodable
    acked: list[Produced] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SteadyProducer:
        self._thread = threading.Thread(target=self._run, name="rely-producer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop producing, wait for every outstanding acknowledgement."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"producer did not flush within {timeout}s")

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))
            return
        key, value = msg.key().decode(), msg.value()
        poison = value.startswith(POISON_PREFIX)
        seq = int(value[len(POISON_PREFIX) :] if poison else value)
        self.acked.append(Produced(msg.topic(), msg.partition(), msg.offset(), key, seq, poison))

    def _run(self) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "delivery.timeout.ms": 120000,
            }
        )
        seqs = [0] * self.keys
        tick = 0.01
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                index = self.sent % self.keys
                value = str(seqs[index]).encode()
                if self.poison_every and self.sent % self.poison_every == self.poison_every - 1:
                    value = POISON_PREFIX + value
                try:
                    producer.produce(
                        self.topic, value, f"k{index}".encode(), on_delivery=self._delivered
                    )
                except BufferError:
                    break  # the local queue is full: try again next tick
                seqs[index] += 1
                self.sent += 1
            producer.poll(0)
            time.sleep(tick)
        remaining = producer.flush(90)
        if remaining:
            self.failed.append(f"{remaining} records not acknowledged at flush")
