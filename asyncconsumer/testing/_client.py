"""``TestClient``: run a real :class:`~asyncconsumer.ConsumerApp` against a
:class:`MemoryKafka` and drive it from a test: publish, wait until idle, look at
commits and produced records, rebalance, fail the next commit or send."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio

from .._errors import CommitError, ConsumerStoppedError
from .._message import Message, TopicPartition, as_record
from .._producer import Headers, RecordMetadata
from .._transport._memory import MemoryConsumer, MemoryKafka

if TYPE_CHECKING:
    from .._app import ConsumerApp
    from .._runtime._engine import Engine

__all__ = ["TestClient"]

log = logging.getLogger("asyncconsumer")


class TestClient:
    """Runs ``app`` (its handlers, lanes, commits, rebalance and stop sequences: the
    real runtime) against ``kafka`` (default: a new :class:`MemoryKafka`), in the
    background, while the ``async with`` block lasts; leaving it stops the app
    gracefully and raises the error the app stopped on, if any.

    Time: retry backoffs are multiplied by ``backoff_scale`` (default ``0``: a retry
    runs at once). The app's ``commit_interval`` is left as it is: :meth:`wait_idle`
    commits what has completed itself, as the periodic commit would, so a test does
    not wait for the interval. ``timeout`` bounds each wait.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: ConsumerApp,
        kafka: MemoryKafka | None = None,
        *,
        backoff_scale: float = 0.0,
        timeout: float = 10.0,
    ) -> None:
        if backoff_scale < 0:
            raise ValueError(f"backoff_scale must be >= 0, not {backoff_scale!r}")
        self.app = app
        self.kafka = kafka if kafka is not None else MemoryKafka()
        self.backoff_scale = backoff_scale
        self.timeout = timeout
        self.group_id: str = app.settings.group_id or ""

    async def __aenter__(self) -> TestClient:
        app = self.app
        app._transport, app._backoff_scale = self.kafka, self.backoff_scale
        try:
            await app.__aenter__()
            await self._wait(lambda: not self.kafka.rebalancing(self.group_id), "the first join")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.app.__aexit__(exc_type, exc, tb)
        finally:
            self.app._transport, self.app._backoff_scale = None, 1.0

    # -- input ---------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: object = None,
        *,
        key: object = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """Append a record to ``topic`` (encoded like the app's producer does:
        bytes, ``str`` as UTF-8, anything else as JSON); the app sees it at once."""
        metadata = self.kafka.publish(
            topic, value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp_ms
        )
        await anyio.lowlevel.checkpoint()
        return metadata

    # -- waiting -------------------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until every record published to the app's partitions has completed
        (handled, dead-lettered or skipped, retries included), then commit the
        completed offsets. Raises ``TimeoutError`` (after the client's ``timeout``)
        saying what is still pending, or
        ``RuntimeError`` (from the app's error) if the app stopped meanwhile.

        A commit that fails here (:meth:`fail_next_commit`) is logged, as the
        periodic commit logs it; the offsets stay pending for the next one."""
        await self._wait(self._idle, "the app to be idle", settle=True)
        engine = self._engine()
        async with engine._lock:
            try:
                await engine._commit(engine._lanes)
            except CommitError as exc:
                log.warning("%s; retrying at the next commit", exc)

    async def rebalance(self, revoke: Iterable[tuple[str, int]] | None = None) -> None:
        """Rebalance the app's group and wait until the app's callbacks returned: the
        real revoke path (in-flight records drained, offsets committed, ``on_revoke``),
        then the assignment (``on_assign``, lanes started).

        ``revoke=None``: every partition is revoked and assigned again (aiokafka's eager
        protocol). ``revoke=[("orders", 0)]``: only those partitions are revoked, then
        assigned back."""
        tps = None if revoke is None else [TopicPartition(t, p) for t, p in revoke]
        await self.kafka.rebalance(self.group_id, revoke=tps)
        self._check_running()

    # -- output --------------------------------------------------------------------------------

    def committed(self, topic: str, partition: int) -> int | None:
        """The app's group's committed offset of ``topic[partition]`` (the next record
        to consume), ``None`` when nothing was committed."""
        return self.kafka.committed(self.group_id, TopicPartition(topic, partition))

    def records(self, topic: str) -> list[Message[bytes | None]]:
        """What is in ``topic``: what the app produced there (dead letters, ``publish_to``
        output) or the test published, with raw keys, values and headers."""
        return [as_record(record) for record in self.kafka.records(topic)]

    # -- failures ------------------------------------------------------------------------------

    def fail_next_commit(self) -> None:
        """The next offset commit raises aiokafka's ``CommitFailedError`` (as when the
        member lost its generation); the runtime's own path handles it."""
        self.kafka.fail_next_commit()

    def fail_next_send(self) -> None:
        """The next record the app produces (dead letter, ``publish_to``, ``app.producer``)
        fails with aiokafka's ``KafkaTimeoutError``."""
        self.kafka.fail_next_send()

    # -- internals -----------------------------------------------------------------------------

    def _engine(self) -> Engine:
        self._check_running()
        engine = self.app._engine
        assert engine is not None
        return engine

    def _check_running(self) -> None:
        app = self.app
        engine = app._engine
        if engine is not None and engine.failure is not None:
            raise RuntimeError(f"the app stopped on {engine.failure!r}") from engine.failure
        if engine is None or engine.client is None:
            error = app.error
            if error is not None:
                raise RuntimeError(f"the app stopped on {error!r}") from error
            raise ConsumerStoppedError("the app is not running")

    def _idle(self) -> bool:
        engine = self._engine()
        client = engine.client
        if not isinstance(client, MemoryConsumer):
            raise TypeError("TestClient needs the app to run on its MemoryKafka")
        if self.kafka.rebalancing(self.group_id):
            return False
        for tp in client.assignment():
            lane = engine._lanes.get(tp)
            position = client._positions.get(tp)
            if lane is None or position is None or position < self.kafka.end_offset(tp):
                return False
            if lane.buffered or lane.running():
                return False
            completed = lane.offsets.completed
            if lane.commit_ahead or completed == position:
                continue
            if completed == -1 and position == client._assigned_at.get(tp):
                continue  # nothing arrived since the assignment
            return False
        return True

    def _pending(self) -> str:
        engine = self.app._engine
        client = engine.client if engine is not None else None
        if engine is None or not isinstance(client, MemoryConsumer):
            return "the app is not running"
        parts = []
        for tp in sorted(client.assignment()):
            lane = engine._lanes.get(tp)
            end = self.kafka.end_offset(tp)
            if lane is None:
                parts.append(f"{tp.topic}[{tp.partition}]: no lane yet")
                continue
            parts.append(
                f"{tp.topic}[{tp.partition}]: end {end}, fetched to "
                f"{client._positions.get(tp)}, completed {lane.offsets.completed}, "
                f"buffered {lane.buffered}, running {sorted(lane.running())}"
            )
        return "; ".join(parts) or "no partition assigned"

    async def _wait(self, ready: Callable[[], bool], what: str, *, settle: bool = False) -> None:
        limit = self.timeout
        deadline = anyio.current_time() + limit
        while True:
            self._check_running()
            if ready():
                if not settle:
                    return
                # Idle must hold while everything ready to run has run.
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                if ready():
                    return
            if anyio.current_time() > deadline:
                raise TimeoutError(f"waited {limit}s for {what}: {self._pending()}")
            await anyio.sleep(0.001)
