"""``MemoryKafka``: a Kafka cluster in memory, behind the same client seam as aiokafka.

Topics have partitions, each an append-only list of records (offsets from 0, no
retention); records keep their key, value, headers and timestamp. Consumer groups
have members, a range or round-robin assignor, committed offsets *with* their
metadata, and rebalances: *eager* like aiokafka's (every member's partitions are
revoked, then the new assignment is given), or, on request, revoking only chosen
partitions. Every member's rebalance callbacks run in the group's coordinator
task, as aiokafka runs them in its own, so the runtime's real revoke path (drain,
commit, ``on_revoke``) runs concurrently with its fetch loop.

Failures on command raise what aiokafka raises: :meth:`MemoryKafka.fail_next_commit`
(``CommitFailedError``), :meth:`MemoryKafka.fail_next_send` (the send's future fails
with ``KafkaTimeoutError``).

Differences from a broker, on purpose: records are visible to consumers as soon as
they are published (no fetch round trip, no batching); ``highwater()`` is the
partition's end at any time; new topics and partitions are seen by a group at its
next rebalance (``await kafka.rebalance(group)``), as after a metadata refresh;
nothing is replicated, retained or compacted. A new topic that a pattern
subscription matches is seen at once (a rebalance), not at aiokafka's next metadata
refresh.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import anyio
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalOperation,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    NoOffsetForPartitionError,
    ProducerFenced,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import (
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    RecordMetadata,
    TopicPartition,
)

from .._errors import AuthenticationError
from .._message import Record, as_record
from .._producer import Headers, encode, encode_headers
from . import MEMORY_SCHEME, register_memory
from ._protocols import ConsumerClient, ProducerClient, Reachability, RebalanceListener

__all__ = ["MemoryConsumer", "MemoryKafka", "MemoryProducer"]

log = logging.getLogger("asyncconsumer")

Assignor = Literal["range", "roundrobin"]

_CREATE_TIME = 0  # timestamp_type: CreateTime


class MemoryKafka:
    """A Kafka cluster in memory for tests (see the module docstring).

    ``name`` (default: a random one) registers it: ``bootstrap_servers=
    "memory://<name>"`` (:attr:`bootstrap_servers`) makes ``ConsumerApp``,
    ``Consumer`` and ``Producer`` use it. ``partitions`` is the partition count of
    topics created on first use (by a producer or a subscription). ``clock``
    returns the timestamp (epoch ms) of records published without one.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        partitions: int = 1,
        assignor: Assignor = "range",
        clock: Callable[[], int] | None = None,
    ) -> None:
        if assignor not in ("range", "roundrobin"):
            raise ValueError(f"assignor must be 'range' or 'roundrobin', not {assignor!r}")
        self.name = name or f"kafka-{uuid.uuid4().hex[:8]}"
        self.default_partitions = partitions
        self.assignor: Assignor = assignor
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._logs: dict[str, list[list[ConsumerRecord]]] = {}
        self._groups: dict[str, _Group] = {}
        self._fetched: dict[TopicPartition, int] = {}
        self._fail_commits: list[BaseException] = []
        self._fail_sends: list[BaseException] = []
        self._tick: anyio.Event | None = None
        self._member_ids = itertools.count()
        self._partitioner = DefaultPartitioner()
        self._round_robin = itertools.count()
        self._epochs: dict[str, int] = {}  # transactional id -> its producers' epoch
        register_memory(self.name, self)

    def __repr__(self) -> str:
        return f"MemoryKafka({self.name!r}, topics={sorted(self._logs)})"

    @property
    def bootstrap_servers(self) -> str:
        """``memory://<name>``: what selects this cluster."""
        return MEMORY_SCHEME + self.name

    # -- Transport ---------------------------------------------------------------------

    def consumer(
        self, *, group_id: str | None, auto_offset_reset: str, options: Mapping[str, Any]
    ) -> ConsumerClient:
        return MemoryConsumer(
            self,
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            max_poll_records=options.get("max_poll_records") or 500,
            client_id=options.get("client_id") or "asyncconsumer",
        )

    def producer(self, options: Mapping[str, Any]) -> ProducerClient:
        return MemoryProducer(self, transactional_id=options.get("transactional_id"))

    # -- topics and records ----------------------------------------------------------------

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        """Create ``topic`` (nothing if it exists)."""
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions!r}")
        if topic not in self._logs:
            self._logs[topic] = [[] for _ in range(partitions)]
            # A group subscribed by pattern sees a matching new topic: aiokafka does at
            # its next metadata refresh.
            for group in self._groups.values():
                if any(m._pattern is not None and m._wants(topic) for m in group.members):
                    group.request(None)

    def add_partitions(self, topic: str, total: int) -> None:
        """Grow ``topic`` to ``total`` partitions; groups see them at their next
        rebalance (as after aiokafka's next metadata refresh)."""
        logs = self._topic(topic)
        if total < len(logs):
            raise ValueError(f"{topic!r} has {len(logs)} partitions; cannot shrink to {total}")
        logs.extend([] for _ in range(total - len(logs)))

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""
        return {topic: len(logs) for topic, logs in self._logs.items()}

    def publish(
        self,
        topic: str,
        value: object = None,
        *,
        key: object = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """Append a record now (keys and values encoded like the app's producer:
        bytes as they are, ``str`` as UTF-8, anything else as JSON); the topic is
        created on first use. A key picks its partition as aiokafka's default
        partitioner does (murmur2), no key round-robin."""
        return self._append(
            topic, encode(value), encode(key), encode_headers(headers), partition, timestamp_ms
        )

    def records(self, topic: str, partition: int | None = None) -> list[ConsumerRecord]:
        """The records of ``topic`` (or of one partition), by partition then offset."""
        logs = self._logs.get(topic, [])
        if partition is not None:
            return list(logs[partition]) if partition < len(logs) else []
        return [record for log_ in logs for record in log_]

    def end_offset(self, tp: TopicPartition) -> int:
        return len(self._partition(tp))

    def fetched(self, tp: TopicPartition) -> int:
        """How many records of ``tp`` consumers have taken (re-fetches count again)."""
        return self._fetched.get(tp, 0)

    # -- groups ----------------------------------------------------------------------------

    def committed(self, group_id: str, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp`` (``None``: nothing committed)."""
        meta = self._group(group_id).committed.get(tp)
        return None if meta is None else meta.offset

    def committed_metadata(self, group_id: str, tp: TopicPartition) -> OffsetAndMetadata | None:
        return self._group(group_id).committed.get(tp)

    def assignment(self, group_id: str) -> dict[str, set[TopicPartition]]:
        """Each member's (by member id) current partitions."""
        return {m.member_id: set(m._positions) for m in self._group(group_id).members}

    async def rebalance(
        self, group_id: str, *, revoke: Iterable[TopicPartition] | None = None
    ) -> None:
        """Rebalance the group and wait until every member's callbacks returned.

        ``revoke=None``: eager, as aiokafka does: every member's partitions are
        revoked, then the assignor's result is assigned. Otherwise only the given
        partitions, and those the assignor moves to another member, are revoked;
        each member is then assigned what it does not have yet (``revoke=[]``: only
        new partitions or members are taken into account)."""
        group = self._groups.get(group_id)
        if group is None or not group.members:
            raise ValueError(f"group {group_id!r} has no members")
        await group.request(None if revoke is None else set(revoke)).wait()

    def rebalancing(self, group_id: str) -> bool:
        """Whether a rebalance of the group is requested or in progress."""
        group = self._groups.get(group_id)
        return group is not None and group.rebalancing

    # -- failures on command -------------------------------------------------------------

    def fail_next_commit(self, error: BaseException | None = None) -> None:
        """The next offset commit (of any member) raises ``error``, by default
        aiokafka's ``CommitFailedError`` (what a member that lost its generation gets);
        nothing is stored. Calls add up: two calls fail the next two commits."""
        self._fail_commits.append(
            error or CommitFailedError("injected by MemoryKafka.fail_next_commit()")
        )

    def fail_next_send(self, error: BaseException | None = None) -> None:
        """The next produced record is not written and its future fails with ``error``,
        by default aiokafka's ``KafkaTimeoutError`` (what a send that could not be
        delivered in time gets). Calls add up."""
        self._fail_sends.append(error or KafkaTimeoutError("injected by fail_next_send()"))

    async def aclose(self) -> None:
        """Stop every group's coordinator task (members still started are stopped)."""
        for group in list(self._groups.values()):
            for member in list(group.members):
                await member.stop()
            await group.close()

    # -- internals ---------------------------------------------------------------------------

    def _topic(self, topic: str) -> list[list[ConsumerRecord]]:
        logs = self._logs.get(topic)
        if logs is None:
            raise KafkaError(f"unknown topic {topic!r}")
        return logs

    def _partition(self, tp: TopicPartition) -> list[ConsumerRecord]:
        logs = self._logs.get(tp.topic)
        if logs is None or not 0 <= tp.partition < len(logs):
            raise KafkaError(f"unknown partition {tp}")
        return logs[tp.partition]

    def _group(self, group_id: str) -> _Group:
        group = self._groups.get(group_id)
        if group is None:
            group = self._groups[group_id] = _Group(self, group_id)
        return group

    def _append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None,
        timestamp_ms: int | None,
    ) -> RecordMetadata:
        self.create_topic(topic, self.default_partitions)
        logs = self._logs[topic]
        if partition is None:
            every = list(range(len(logs)))
            if key is None:
                partition = next(self._round_robin) % len(logs)
            else:
                partition = self._partitioner(key, every, every)
        elif not 0 <= partition < len(logs):
            raise KafkaError(f"{topic!r} has no partition {partition}")
        log_ = logs[partition]
        offset = len(log_)
        timestamp = self._clock() if timestamp_ms is None else timestamp_ms
        log_.append(
            ConsumerRecord(
                topic,
                partition,
                offset,
                timestamp,
                _CREATE_TIME,
                key,
                value,
                None,
                -1 if key is None else len(key),
                -1 if value is None else len(value),
                tuple(headers or ()),
            )
        )
        self._notify()
        tp = TopicPartition(topic, partition)
        return RecordMetadata(topic, partition, tp, offset, timestamp, _CREATE_TIME, 0)

    def _notify(self) -> None:
        """Wake consumers waiting in ``getmany``."""
        tick, self._tick = self._tick, None
        if tick is not None:
            tick.set()

    async def _wait(self, seconds: float) -> None:
        if self._tick is None:
            self._tick = anyio.Event()
        with anyio.move_on_after(seconds):
            await self._tick.wait()

    def _assign(
        self, members: Sequence[MemoryConsumer]
    ) -> dict[MemoryConsumer, set[TopicPartition]]:
        """The assignor: ``range`` (per topic, consecutive partitions per member) or
        ``roundrobin`` (every partition in turn), members in join order."""
        result: dict[MemoryConsumer, set[TopicPartition]] = {m: set() for m in members}
        by_topic: dict[str, list[MemoryConsumer]] = {}
        for topic in sorted(self._logs):
            interested = [m for m in members if m._wants(topic)]
            if interested:
                by_topic[topic] = interested
        if self.assignor == "range":
            for topic, interested in by_topic.items():
                count = len(self._logs[topic])
                share, extra = divmod(count, len(interested))
                start = 0
                for i, member in enumerate(interested):
                    size = share + (1 if i < extra else 0)
                    result[member].update(
                        TopicPartition(topic, p) for p in range(start, start + size)
                    )
                    start += size
        else:
            turn = 0
            for topic, interested in by_topic.items():
                for p in range(len(self._logs[topic])):
                    result[interested[turn % len(interested)]].add(TopicPartition(topic, p))
                    turn += 1
        return result


class _Group:
    """A consumer group: members, committed offsets, and the coordinator task that
    runs rebalances one at a time (members' callbacks included)."""

    def __init__(self, kafka: MemoryKafka, group_id: str) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.members: list[MemoryConsumer] = []
        self.committed: dict[TopicPartition, OffsetAndMetadata] = {}
        self.generation = 0
        self.rebalancing = False
        self._requests: list[tuple[set[TopicPartition] | None, anyio.Event]] = []
        self._wakeup: anyio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def request(self, revoke: set[TopicPartition] | None) -> anyio.Event:
        done = anyio.Event()
        self._requests.append((revoke, done))
        self.rebalancing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"MemoryKafka group {self.group_id}"
            )
        return done

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
        for _, done in self._requests:
            done.set()
        self._requests.clear()
        self.rebalancing = False

    async def _run(self) -> None:
        while True:
            if not self._requests:
                if not self.members:
                    return
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            requests, self._requests = self._requests, []
            revokes = [revoke for revoke, _ in requests]
            revoke = None if None in revokes else set().union(*revokes)  # type: ignore[arg-type]
            try:
                await self._rebalance(revoke)
            finally:
                self.rebalancing = bool(self._requests)
                for _, done in requests:
                    done.set()

    async def _rebalance(self, revoke: set[TopicPartition] | None) -> None:
        members = list(self.members)
        target = self.kafka._assign(members)
        for member in members:
            owned = set(member._positions)
            lost = owned if revoke is None else (owned - target[member]) | (owned & revoke)
            if revoke is None or lost:
                await member._callback("revoked", lost)
            member._unassign(lost)
        self.generation += 1
        # Members that left meanwhile are gone; the assignment of the others stands
        # (a leave requests another rebalance).
        for member in list(self.members):
            if member not in target:
                continue
            added = target[member] - set(member._positions)
            member._assign(added)
            if revoke is None or added:
                await member._callback("assigned", added)


class MemoryConsumer:
    """A :class:`~._protocols.ConsumerClient` of a :class:`MemoryKafka`."""

    def __init__(
        self,
        kafka: MemoryKafka,
        *,
        group_id: str | None,
        auto_offset_reset: str,
        max_poll_records: int = 500,
        client_id: str = "asyncconsumer",
    ) -> None:
        self.kafka = kafka
        self.group_id = group_id
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.member_id = f"{client_id}-{next(kafka._member_ids)}"
        self._topics: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self._listener: RebalanceListener | None = None
        self._subscribed = False
        self._positions: dict[TopicPartition, int | None] = {}  # None: no offset (reset=none)
        self._assigned_at: dict[TopicPartition, int | None] = {}  # the position then
        self._paused: set[TopicPartition] = set()
        self._started = False
        self._closed = False
        self._callback_scope: anyio.CancelScope | None = None
        self._turn = 0  # rotates the partition taken first: fairness

    def __repr__(self) -> str:
        return f"MemoryConsumer({self.member_id!r}, group={self.group_id!r})"

    async def start(self) -> None:
        self._started = True
        if self._subscribed:
            self._join()

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kafka._notify()
        if self._callback_scope is not None:
            self._callback_scope.cancel()
        group = self._my_group()
        if group is not None and self in group.members:
            group.members.remove(self)
            if group.members:
                group.request(None)  # the others rebalance, as after a LeaveGroup
            else:
                await group.close()
        self._positions.clear()
        self._paused.clear()

    # -- membership ------------------------------------------------------------------------

    def subscribe(
        self,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        listener: RebalanceListener | None = None,
    ) -> None:
        if self.group_id is None:
            raise IllegalStateError("subscribing needs a group_id")
        self._topics = frozenset(topics)
        self._pattern = re.compile(pattern) if pattern is not None else None
        self._listener = listener
        self._subscribed = True
        for topic in topics:  # created on first use, as Kafka's auto-create does
            self.kafka.create_topic(topic, self.kafka.default_partitions)
        if self._started:
            self._join()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._positions.clear()
        self._paused.clear()
        for tp in partitions:
            self.kafka._partition(tp)
        self._assign(set(partitions))

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def _join(self) -> None:
        assert self.group_id is not None
        group = self.kafka._group(self.group_id)
        if self not in group.members:
            group.members.append(self)
            group.request(None)

    def _my_group(self) -> _Group | None:
        return None if self.group_id is None else self.kafka._groups.get(self.group_id)

    def _wants(self, topic: str) -> bool:
        if self._pattern is not None:
            return self._pattern.match(topic) is not None
        return topic in self._topics

    def _assign(self, tps: set[TopicPartition]) -> None:
        group = self._my_group()
        for tp in sorted(tps):
            meta = group.committed.get(tp) if group is not None else None
            if meta is not None and meta.offset >= 0:
                self._positions[tp] = meta.offset
            elif self.auto_offset_reset == "earliest":
                self._positions[tp] = 0
            elif self.auto_offset_reset == "latest":
                self._positions[tp] = self.kafka.end_offset(tp)
            else:
                self._positions[tp] = None
            self._assigned_at[tp] = self._positions[tp]
            self._paused.discard(tp)
        self.kafka._notify()

    def _unassign(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._positions.pop(tp, None)
            self._assigned_at.pop(tp, None)
            self._paused.discard(tp)

    async def _callback(self, kind: str, tps: set[TopicPartition]) -> None:
        listener = self._listener
        if listener is None or self._closed:
            return
        with anyio.CancelScope() as scope:
            self._callback_scope = scope
            try:
                if kind == "revoked":
                    await listener.on_partitions_revoked(set(tps))
                else:
                    await listener.on_partitions_assigned(set(tps))
            except Exception:  # as aiokafka: logged, not raised into the coordinator
                log.exception("rebalance listener of %s failed on %s %s", self, kind, tps)
            finally:
                self._callback_scope = None

    # -- fetching ------------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        limit = max_records or self.max_poll_records
        deadline = anyio.current_time() + timeout_ms / 1000
        while True:
            if self._closed:
                raise ConsumerStoppedError()
            taken = self._take(partitions, limit)
            if taken:
                await anyio.lowlevel.checkpoint()
                return taken
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                await anyio.lowlevel.checkpoint()
                return {}
            await self.kafka._wait(remaining)

    def _take(
        self, partitions: tuple[TopicPartition, ...], limit: int
    ) -> dict[TopicPartition, list[Record]]:
        wanted = sorted(
            self._positions if not partitions else set(partitions) & set(self._positions)
        )
        if not wanted:
            return {}
        self._turn = (self._turn + 1) % len(wanted)
        out: dict[TopicPartition, list[Record]] = {}
        fetched = self.kafka._fetched
        for tp in wanted[self._turn :] + wanted[: self._turn]:
            if limit <= 0:
                break
            if tp in self._paused:
                continue
            position = self._positions[tp]
            if position is None:
                raise NoOffsetForPartitionError(tp)
            log_ = self.kafka._partition(tp)
            if position < len(log_):
                records = [as_record(r) for r in log_[position : position + limit]]
                out[tp] = records
                self._positions[tp] = position + len(records)
                limit -= len(records)
                fetched[tp] = fetched.get(tp, 0) + len(records)
        return out

    # -- offsets ---------------------------------------------------------------------------------

    async def commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], *, revoking: bool = False
    ) -> None:
        group = self._my_group() if self.group_id is not None else None
        if self.group_id is None:
            raise IllegalOperation("Requires group_id")
        await anyio.lowlevel.checkpoint()
        if not revoking:
            for tp in offsets:
                if tp not in self._positions:
                    raise IllegalStateError(f"Partition {tp} is not assigned")
        if self.kafka._fail_commits:
            raise self.kafka._fail_commits.pop(0)
        if group is None:
            group = self.kafka._group(self.group_id)
        for tp, meta in offsets.items():
            group.committed[tp] = OffsetAndMetadata(meta.offset, meta.metadata)

    async def committed(self, partition: TopicPartition) -> int | None:
        if self.group_id is None:
            raise IllegalOperation("Requires group_id")
        await anyio.lowlevel.checkpoint()
        return self.kafka.committed(self.group_id, partition)

    async def committed_metadata(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        await anyio.lowlevel.checkpoint()
        group = self._my_group()
        if group is None:
            return {}
        return {tp: group.committed[tp] for tp in partitions if tp in group.committed}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._assigned(partition)
        self._positions[partition] = offset
        self.kafka._notify()

    def pause(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._assigned(tp)
            self._paused.add(tp)

    def resume(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._assigned(tp)
            self._paused.discard(tp)
        self.kafka._notify()

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def highwater(self, partition: TopicPartition) -> int | None:
        if partition not in self._positions:
            return None
        return self.kafka.end_offset(partition)

    async def position(self, partition: TopicPartition) -> int:
        self._assigned(partition)
        position = self._positions[partition]
        if position is None:
            raise NoOffsetForPartitionError(partition)
        return position

    async def beginning_offsets(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        for tp in partitions:
            self.kafka._partition(tp)
        return {tp: 0 for tp in partitions}

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.kafka.end_offset(tp) for tp in partitions}

    async def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        found: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, when in timestamps.items():
            found[tp] = next(
                (
                    OffsetAndTimestamp(r.offset, r.timestamp)
                    for r in self.kafka._partition(tp)
                    if r.timestamp >= when
                ),
                None,
            )
        return found

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        logs = self.kafka._logs.get(topic)
        return None if logs is None else set(range(len(logs)))

    def watch(self, reachability: Reachability) -> None:
        reachability.local = True  # no network: never unreachable

    def on_refused(self, callback: Callable[[AuthenticationError], None]) -> None:
        pass  # nothing to refuse in memory

    def request_rejoin(self) -> None:
        group = self._my_group()
        if group is not None and self in group.members:
            group.request(None)

    def _assigned(self, tp: TopicPartition) -> None:
        if tp not in self._positions:
            raise IllegalStateError(f"No current assignment for partition {tp}")


class MemoryProducer:
    """A :class:`~._protocols.ProducerClient` of a :class:`MemoryKafka`: a record is
    written when sent, and its future is already resolved.

    With a ``transactional_id``: starting it fences the id's previous producer (its
    next call raises ``ProducerFenced``); records sent in a transaction are written,
    with the offsets sent to it, when it commits (consumers see only committed ones,
    as ``read_committed`` readers do), and dropped when it aborts. Their futures
    resolve at once, with offset ``-1``: the offset is known at the commit."""

    def __init__(self, kafka: MemoryKafka, transactional_id: str | None = None) -> None:
        self.kafka = kafka
        self.transactional_id = transactional_id
        self._started = False
        self._epoch = 0
        self._txn: list[tuple[Any, ...]] | None = None  # sends of the open transaction
        self._txn_offsets: list[tuple[str, Mapping[TopicPartition, OffsetAndMetadata]]] = []

    def on_refused(self, callback: Callable[[AuthenticationError], None]) -> None:
        pass  # nothing to refuse in memory

    async def start(self) -> None:
        self._started = True
        if self.transactional_id is not None:
            epochs = self.kafka._epochs
            self._epoch = epochs[self.transactional_id] = epochs.get(self.transactional_id, 0) + 1

    def _check_epoch(self) -> None:
        tid = self.transactional_id
        if tid is None:
            raise IllegalOperation("transactions need a transactional_id")
        if self.kafka._epochs.get(tid) != self._epoch:
            self._txn = None
            raise ProducerFenced()

    async def begin_transaction(self) -> None:
        self._check_epoch()
        self._txn, self._txn_offsets = [], []

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_id: str
    ) -> None:
        self._check_epoch()
        await anyio.lowlevel.checkpoint()
        self._txn_offsets.append((group_id, dict(offsets)))

    async def commit_transaction(self) -> None:
        self._check_epoch()
        await anyio.lowlevel.checkpoint()
        self._check_epoch()
        sends, self._txn = self._txn or [], None
        offsets, self._txn_offsets = self._txn_offsets, []
        for send in sends:
            self.kafka._append(*send)
        for group_id, committed in offsets:
            group = self.kafka._group(group_id)
            for tp, meta in committed.items():
                group.committed[tp] = OffsetAndMetadata(meta.offset, meta.metadata)

    async def abort_transaction(self) -> None:
        self._txn, self._txn_offsets = None, []
        await anyio.lowlevel.checkpoint()

    async def stop(self) -> None:
        self._started = False

    async def flush(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        if not self._started:
            raise KafkaError("the producer is not started")
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        kafka = self.kafka
        if kafka._fail_sends:
            future.set_exception(kafka._fail_sends.pop(0))
        elif self.transactional_id is not None:
            self._check_epoch()
            if self._txn is None:  # what aiokafka raises (a fenced producer's too)
                raise IllegalOperation("Can't send messages while not in transaction")
            self._txn.append((topic, value, key, headers, partition, timestamp_ms))
            tp = TopicPartition(topic, -1 if partition is None else partition)
            future.set_result(RecordMetadata(topic, tp.partition, tp, -1, -1, _CREATE_TIME, 0))
        else:
            future.set_result(kafka._append(topic, value, key, headers, partition, timestamp_ms))
        await anyio.lowlevel.checkpoint()
        return future
