"""What the runtime asks of a Kafka client: the seam between asyncconsumer and aiokafka.

The engine, :class:`~asyncconsumer.Consumer`, the producer and the seek look-ups
call only what these protocols name. :mod:`._aiokafka` implements them with
aiokafka (and its work-arounds); :class:`~asyncconsumer.testing.MemoryKafka`
implements them in memory. Fetched records are :data:`~asyncconsumer._message.Record`
objects (a :class:`~asyncconsumer.Message` of the raw bytes, built once per record);
offsets and errors keep aiokafka's types (``OffsetAndMetadata``,
``CommitFailedError``, ...): they are
the vocabulary at the edge, and an in-memory client that raises exactly what the
real one raises makes the runtime's real error paths run in tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiokafka.structs import (
        OffsetAndMetadata,
        OffsetAndTimestamp,
        RecordMetadata,
        TopicPartition,
    )

    from .._errors import AuthenticationError
    from .._message import Record

__all__ = [
    "ConsumerClient",
    "ProducerClient",
    "Reachability",
    "RebalanceListener",
    "Transport",
]


class RebalanceListener(Protocol):
    """Called by the client around a rebalance: revoked partitions first (they are
    still owned while this runs), then the newly assigned ones (already fetchable
    while this runs)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...


class Reachability:
    """Times the answers to the member's requests (health's cluster check).

    A client reports into it (:meth:`ConsumerClient.watch`). The cluster is
    *unreachable* when requests fail or none is sent and no response arrived for a
    while; a request still waiting for its answer (a long join) is not a failure.
    ``local``: the client needs no network (in memory), never unreachable.
    """

    __slots__ = ("failing", "in_flight", "last_response", "local")

    def __init__(self) -> None:
        self.last_response = time.monotonic()
        self.failing = False
        self.in_flight = 0
        self.local = False

    def unreachable_for(self) -> float:
        """Seconds since the last response, unless requests are waiting for their
        answers and none failed since that response (then ``0.0``)."""
        if self.local or (self.in_flight and not self.failing):
            return 0.0
        return time.monotonic() - self.last_response


class ConsumerClient(Protocol):
    """A Kafka consumer as the runtime uses it (aiokafka's ``AIOKafkaConsumer``
    semantics: positions move as ``getmany`` hands records out, a commit stores the
    offset of the *next* record, ``IllegalStateError`` for a partition not assigned)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Close in any state of the cluster (commits nothing; leaves the group)."""

    def subscribe(
        self,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        listener: RebalanceListener | None = None,
    ) -> None: ...

    def assign(self, partitions: Iterable[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]: ...

    async def commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], *, revoking: bool = False
    ) -> None:
        """Store ``offsets`` (with their metadata) for the group. ``revoking``: called
        from a revoke callback, where the member still owns the partitions although
        its subscription may already have changed."""

    async def committed(self, partition: TopicPartition) -> int | None: ...

    async def committed_metadata(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets *with* their metadata (absent: none)."""

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def highwater(self, partition: TopicPartition) -> int | None:
        """The end offset as of the last fetch response (``None`` before one)."""

    async def position(self, partition: TopicPartition) -> int: ...

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def end_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]: ...

    async def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]: ...

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...

    def watch(self, reachability: Reachability) -> None:
        """Report every request's outcome to ``reachability`` (before :meth:`start`)."""

    def request_rejoin(self) -> None:
        """Rejoin the group soon (a rebalance), e.g. after a partition's transactional
        producer was fenced: it is another member's now."""

    def on_refused(self, callback: Callable[[AuthenticationError], None]) -> None:
        """Call ``callback`` when a later connection of this started client is refused
        for good (credentials, certificate), which retrying cannot cure."""


class ProducerClient(Protocol):
    """A Kafka producer as the runtime uses it (``AIOKafkaProducer`` semantics:
    ``send`` queues the record and returns a future of its acknowledgement)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Flush what is pending, then close."""

    async def flush(self) -> None: ...

    def on_refused(self, callback: Callable[[AuthenticationError], None]) -> None:
        """Call ``callback`` when a later connection of this started client is refused
        for good (credentials, certificate), which retrying cannot cure."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]: ...

    # Transactions (producers made with a ``transactional_id``):

    async def begin_transaction(self) -> None: ...

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> None: ...

    async def commit_transaction(self) -> None: ...

    async def abort_transaction(self) -> None: ...


class Transport(Protocol):
    """Makes the clients of one cluster: aiokafka's for a real one, or a
    :class:`~asyncconsumer.testing.MemoryKafka`."""

    def consumer(
        self, *, group_id: str | None, auto_offset_reset: str, options: Mapping[str, Any]
    ) -> ConsumerClient: ...

    def producer(self, options: Mapping[str, Any]) -> ProducerClient: ...
