"""Members as subprocesses, a three-node Apache Kafka cluster, topics and offsets.

Members run the way users deploy: ``python -m asyncconsumer run
reliability.member_app:app``. A :class:`Member` is one logical member; each
:meth:`Member.start` is a new process with a new member id (``m1.2``: member 1,
second incarnation), so the checker tells incarnations apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from asyncconsumer.testing import ApacheKafka

from .checker import TP, BrokerSample, Event, read_log, read_logs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / ".chaos-results.jsonl"  # every run's figures, read by reliability.figures


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate()``; return the seconds it took, or fail the test."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class Member:
    """One member of the group, (re)started as a subprocess."""

    index: int
    env: dict[str, str]
    directory: Path
    app: str = "reliability.member_app:app"  # what `asyncconsumer run` runs
    incarnation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def member_id(self) -> str:
        return f"m{self.index}.{self.incarnation}"

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def start(self) -> None:
        self.incarnation += 1
        log = self.directory / f"{self.member_id}.jsonl"
        self.logs.append(log)
        stderr = open(self.directory / f"{self.member_id}.stderr", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "asyncconsumer", "--log-level", "WARNING", "run"]
        self.proc = subprocess.Popen(
            [*command, self.app],
            cwd=ROOT,
            env={**self.env, "RELY_MEMBER": self.member_id, "RELY_LOG": str(log)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()

    def events(self) -> list[Event]:
        return read_log(self.log) if self.log.exists() else []

    def assigned(self) -> bool:
        """Whether the current incarnation has been through an assignment."""
        return any(e["ev"] == "assign" for e in self.events())

    def owns(self) -> list[tuple[str, int]] | None:
        """The partitions of its last assignment; None while revoked or never assigned."""
        changes = [e for e in self.events() if e["ev"] in ("assign", "revoke")]
        if not changes or changes[-1]["ev"] == "revoke":
            return None
        return [(t, p) for t, p in changes[-1]["parts"]]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop) and wait; the exit code."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stderr_tail(self) -> str:
        path = self.directory / f"{self.member_id}.stderr"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@dataclass
class Group:
    """The members of one scenario's consumer group."""

    cluster: ApacheKafka
    topic: str
    group_id: str
    directory: Path
    members: list[Member] = field(default_factory=list)
    app: str = "reliability.member_app:app"

    def add(self, count: int, **settings: Any) -> list[Member]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RELY_BOOTSTRAP": self.cluster.bootstrap_servers,
            "RELY_GROUP": self.group_id,
            "RELY_TOPIC": self.topic,
            **{f"RELY_{k.upper()}": str(v) for k, v in settings.items()},
        }
        added = [Member(len(self.members) + i, env, self.directory, self.app) for i in range(count)]
        self.members.extend(added)
        for member in added:
            member.start()
        return added

    def wait_assigned(self, partitions: int, timeout: float = 60.0) -> float:
        """Wait until the group is settled: every member runs, and their last
        assignments split the topic's partitions between them; fail if one exited."""
        everything = sorted((self.topic, p) for p in range(partitions))

        def ready() -> bool:
            owned: list[tuple[str, int]] = []
            for member in self.members:
                if not member.alive():
                    raise AssertionError(f"{member.member_id} exited: {member.stderr_tail()}")
                parts = member.owns()
                if parts is None:
                    return False
                owned.extend(parts)
            return sorted(owned) == everything

        return wait_until(ready, timeout, "the group settled")

    def logs(self) -> dict[str, list[Event]]:
        return read_logs(path for m in self.members for path in m.logs)

    def stop_all(self) -> None:
        for member in self.members:
            if member.alive():
                member.proc.terminate()  # type: ignore[union-attr]
        for member in self.members:
            if member.proc is not None:
                try:
                    member.proc.wait(30)
                except subprocess.TimeoutExpired:
                    member.kill()

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members)


# -- the cluster and its offsets -------------------------------------------------------


def create_topic(cluster: ApacheKafka, name: str, partitions: int) -> None:
    """A topic replicated on all three nodes (min ISR 2)."""
    anyio.run(lambda: cluster.create_topic(name, partitions, replication_factor=3))


def _client(bootstrap: str, group_id: str) -> Any:
    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False}
    )


Offsets = tuple[dict[TP, int | None], dict[TP, int]]


def offsets(bootstrap: str, group_id: str, topic: str, partitions: int) -> Offsets:
    """The group's committed offsets (``committed()``, no join) and the end offsets."""
    client = _client(bootstrap, group_id)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = {
            (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in client.committed(tps, timeout=10)
        }
        ends = {
            (topic, p): client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
        return committed, ends
    finally:
        client.close()


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> node id of its leader."""
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return {p: info.leader for p, info in meta.topics[topic].partitions.items()}


def coordinator(bootstrap: str, group_id: str) -> int:
    """The node id of the group's coordinator."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.describe_consumer_groups([group_id])[group_id]
    return int(future.result(timeout=10).coordinator.id)


class CommitSampler:
    """Samples the group's committed offsets and commit metadata from the broker
    (aiokafka's admin ``OffsetFetch``; confluent-kafka 2.16.1's ``committed()`` can
    hand back corrupted metadata) every ``interval`` seconds, in a thread, until
    :meth:`stop`. Answers that fail or time out (a broker down) are counted, not kept."""

    def __init__(self, bootstrap: str, group_id: str, interval: float = 0.5) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.interval = interval
        self.samples: list[BrokerSample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="rely-sampler", daemon=True)

    def start(self) -> CommitSampler:
        self._thread.start()
        return self

    def stop(self) -> list[BrokerSample]:
        self._stop.set()
        self._thread.join(30)
        return self.samples

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            while not self._stop.is_set():
                try:
                    async with asyncio.timeout(5):
                        answer = await admin.list_consumer_group_offsets(self.group_id)
                except (Exception, TimeoutError):
                    self.errors += 1
                else:
                    at = time.monotonic()
                    offsets = {
                        (tp.topic, tp.partition): (meta.offset, meta.metadata or "")
                        for tp, meta in answer.items()
                    }
                    self.samples.append(BrokerSample(at, offsets))
                await asyncio.sleep(self.interval)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


@dataclass(frozen=True)
class DeadLetter:
    """A record of a dead-letter topic, by the provenance headers asyncconsumer adds."""

    original: tuple[str, int, int]  # topic, partition, offset
    attempts: int
    exception: str  # dlq.exception.type
    timestamp_ms: int  # when it was produced (CreateTime)
    key: str
    value: bytes


def read_dead_letters(bootstrap: str, topic: str, partitions: int) -> list[DeadLetter]:
    """Every record of ``topic`` (a dead-letter topic), read from the beginning to the
    end offsets with a confluent-kafka consumer (no group: assigned partitions)."""
    client = _client(bootstrap, unique("dlq-reader"))
    try:
        ends = {
            p: client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
        client.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        letters: list[DeadLetter] = []
        positions = dict.fromkeys(range(partitions), 0)
        deadline = time.monotonic() + 60
        while any(positions[p] < ends[p] for p in positions):
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} timed out at {positions} of {ends}")
            for msg in client.consume(500, timeout=1.0):
                if msg.error():
                    raise AssertionError(f"reading {topic}: {msg.error()}")
                positions[msg.partition()] = msg.offset() + 1
                headers = {k: v.decode() for k, v in msg.headers() or []}
                letters.append(
                    DeadLetter(
                        (
                            headers["dlq.original.topic"],
                            int(headers["dlq.original.partition"]),
                            int(headers["dlq.original.offset"]),
                        ),
                        int(headers["dlq.attempts"]),
                        headers["dlq.exception.type"],
                        msg.timestamp()[1],
                        (msg.key() or b"").decode(),
                        msg.value() or b"",
                    )
                )
        return letters
    finally:
        client.close()
