"""``ShareConsumer``: a share-group member (KIP-932) with ``async for``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NamedTuple

import anyio
from aiokafka.errors import KafkaError

from .._codecs import CodecSpec, resolve_codec
from .._errors import (
    AsyncConsumerError,
    ConfigurationError,
    ConsumerStoppedError,
    DeserializationError,
)
from .._message import TopicPartition
from .._security import Security, check_security
from .._transport._share import ShareClient, record_batches
from . import _protocol as proto

__all__ = ["ShareConsumer", "ShareGroupError", "ShareMessage"]

log = logging.getLogger("asyncconsumer")

# Kafka error codes the share consumer acts on (org.apache.kafka.common.protocol.Errors)
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
UNKNOWN_MEMBER_ID = 25
FENCED_LEADER_EPOCH = 74
UNKNOWN_TOPIC_ID = 100
FENCED_MEMBER_EPOCH = 110
INVALID_RECORD_STATE = 121
SHARE_SESSION_NOT_FOUND = 122
INVALID_SHARE_SESSION_EPOCH = 123
_RETRY_COORDINATOR = {COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR}
_REJOIN = {UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH}
_LEADER_MOVED = {
    UNKNOWN_TOPIC_OR_PARTITION,
    NOT_LEADER_OR_FOLLOWER,
    FENCED_LEADER_EPOCH,
    UNKNOWN_TOPIC_ID,
}
_SESSION_LOST = {SHARE_SESSION_NOT_FOUND, INVALID_SHARE_SESSION_EPOCH}
_MAX_EPOCH = 2**31 - 1
_RETRY_BACKOFF = 0.2

_KIND = {proto.ACCEPT: "accept", proto.RELEASE: "release", proto.REJECT: "reject"}


class ShareGroupError(AsyncConsumerError):
    """The broker refused a share-group request: ``code`` is Kafka's error code."""

    def __init__(self, what: str, code: int, message: str | None) -> None:
        super().__init__(
            f"{what} failed with Kafka error {code}" + (f": {message}" if message else "")
        )
        self.code = code


class ShareMessage(NamedTuple):
    """One record acquired from a share group. Immutable.

    Like :class:`~asyncconsumer.Message`, plus ``delivery_count``: 1 on the first
    delivery, one more each time the record comes back (released by a member,
    or its acquisition lock ran out).
    """

    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: Sequence[tuple[str, bytes]]
    timestamp: int
    delivery_count: int

    @property
    def tp(self) -> TopicPartition:
        """The record's topic and partition."""
        return TopicPartition(self.topic, self.partition)

    def __repr__(self) -> str:
        return (
            f"ShareMessage({self.topic}[{self.partition}]@{self.offset}, "
            f"delivery {self.delivery_count}, key={self.key!r})"
        )


Key = tuple[uuid.UUID, int]  # (topic id, partition)


class _Session:
    """A share session with one broker: its epoch and the partitions in it; ``lock``
    serialises its requests (each carries the epoch and moves it on)."""

    __slots__ = ("epoch", "lock", "partitions")

    def __init__(self) -> None:
        self.epoch = 0
        self.partitions: set[Key] = set()
        self.lock = asyncio.Lock()

    def advance(self) -> None:
        self.epoch = 1 if self.epoch >= _MAX_EPOCH else self.epoch + 1


def _member_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class ShareConsumer:
    """A member of share group ``group_id`` (KIP-932, Apache Kafka 4.2+)::

        async with ShareConsumer("jobs", bootstrap_servers=..., group_id="workers") as jobs:
            async for msg in jobs:
                await handle(msg)          # asking for the next record accepts this one

    Any number of members may consume the same partitions: the broker hands each
    record to one member at a time, under an acquisition lock (30 s by default,
    the group config ``share.record.lock.duration.ms``), and counts deliveries.
    Every record gets one acknowledgement:

    - **accept** -- done. Moving on to the next record accepts the previous one
      unless it was decided otherwise; :meth:`accept` says so explicitly.
    - **release** (:meth:`release`) -- give it back: it is delivered again (maybe
      to another member) with ``delivery_count`` one higher.
    - **reject** (:meth:`reject`) -- a poison pill: archived, never delivered again.

    The broker stops delivering a record after ``share.delivery.count.limit``
    deliveries (5 by default) and archives it. Acknowledgements travel with the
    next fetch (or :meth:`commit` sends them at once). Leaving ``async with``
    acknowledges what was decided and releases the records fetched but not yet
    handed out; the record in hand counts as accepted on a normal exit and is
    released on an exception.

    ``max_records`` bounds the records one fetch acquires; with the default
    ``acquire_mode="batch_optimized"`` the broker rounds up to whole record batches
    (a producer's batch may hold thousands of records, all then acquired by one
    member), with ``"record_limit"`` (Kafka 4.2+) it never acquires more: use it
    with a small ``max_records`` when records are slow to process, so that the
    members share them.

    ``renew_locks`` (default on; Kafka 4.2+, KIP-1222): the lock of a record handed
    out and still undecided after a third of the lock duration is renewed, again and
    again, so that slow handling keeps its records (``lock_renewals`` counts them). A
    broker that cannot renew is logged once and the locks then simply expire. Records
    fetched but not handed out yet are not renewed.

    ``auto_offset_reset`` sets the group's ``share.auto.offset.reset`` (a group
    config, used when a partition is first read by the group) before joining:
    ``None`` (default) leaves it as the group has it (Kafka's default: "latest").
    ``group_configs`` sets other group configs the same way, e.g.
    ``{"share.record.lock.duration.ms": "60000", "share.delivery.count.limit": "3"}``
    (``IncrementalAlterConfigs``; needs ALTER_CONFIGS on the group where ACLs apply).

    A record whose key or value cannot be decoded raises
    :class:`~asyncconsumer.DeserializationError` from the loop and is released
    (it comes back until the delivery limit archives it); the loop may go on.
    Share groups keep no order: records of one partition may be handed to
    several members at once.

    ``security`` (a :class:`~asyncconsumer.Security`: TLS, SASL) secures the
    connections, as for :class:`~asyncconsumer.Consumer`.
    """

    def __init__(
        self,
        *topics: str,
        bootstrap_servers: str | list[str],
        group_id: str,
        key_codec: CodecSpec = "bytes",
        value_codec: CodecSpec = "bytes",
        auto_offset_reset: Literal["earliest", "latest"] | None = None,
        group_configs: Mapping[str, str] | None = None,
        max_records: int = 500,
        acquire_mode: Literal["batch_optimized", "record_limit"] = "batch_optimized",
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 50 * 1024 * 1024,
        client_id: str = "asyncconsumer-share",
        request_timeout_ms: int = 40_000,
        renew_locks: bool = True,
        security: Security | None = None,
    ) -> None:
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise ConfigurationError("ShareConsumer needs one or more topic names")
        if not group_id:
            raise ConfigurationError("ShareConsumer needs a group_id (the share group)")
        servers = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
        )
        if servers.startswith("memory://"):
            raise ConfigurationError("share groups need a real Kafka broker (4.2+), not memory://")
        if auto_offset_reset not in (None, "earliest", "latest"):
            raise ConfigurationError(
                f"auto_offset_reset must be 'earliest', 'latest' or None, not {auto_offset_reset!r}"
            )
        if acquire_mode not in ("batch_optimized", "record_limit"):
            raise ConfigurationError(
                f"acquire_mode must be 'batch_optimized' or 'record_limit', not {acquire_mode!r}"
            )
        if max_records < 1:
            raise ConfigurationError(f"max_records must be >= 1, not {max_records}")
        check_security(security, {}, "the share consumer")
        self._security = security
        self.topics = sorted(set(topics))
        self.group_id = group_id
        self.member_id = _member_id()
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._request_timeout_ms = request_timeout_ms
        self._group_configs = {str(k): str(v) for k, v in (group_configs or {}).items()}
        if auto_offset_reset is not None:
            self._group_configs["share.auto.offset.reset"] = auto_offset_reset
        self._max_records = max_records
        self._acquire_mode = (
            proto.RECORD_LIMIT if acquire_mode == "record_limit" else proto.BATCH_OPTIMIZED
        )
        self._max_wait_ms = fetch_max_wait_ms
        self._max_bytes = fetch_max_bytes
        self._key_codec = resolve_codec(key_codec, what="key_codec")
        self._value_codec = resolve_codec(value_codec, what="value_codec")
        self._client: ShareClient | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._coordinator: int | None = None
        self._epoch = 0
        self._assigned: set[Key] = set()
        self._assignment_changed = asyncio.Event()
        self._names: dict[uuid.UUID, str] = {}
        self._ids: dict[str, uuid.UUID] = {}
        self._leaders: dict[Key, int] = {}
        self._sessions: dict[int, _Session] = {}
        self._pending: dict[Key, dict[int, int]] = {}  # acknowledgements to send
        # fetched, not handed out yet: (record, topic, partition, delivery count, fetched at)
        self._buffer: deque[tuple[Any, str, int, int, float]] = deque()
        self._current: ShareMessage | None = None  # handed out, undecided
        # handed out and undecided: (partition key, offset) -> when its lock was taken
        # (fetched) or last renewed (monotonic seconds)
        self._held: dict[tuple[Key, int], float] = {}
        self._renew = renew_locks
        self._renewer: asyncio.Task[None] | None = None
        # The fetch in flight (a task, so that it goes on while records are handled):
        # started when the loop finds the buffer empty, or before that, once the
        # buffer runs below _low_water records (see _refilled).
        self._fetching: dict[int | None, asyncio.Task[None]] = {}  # by broker
        self._nodes = 1  # brokers fetched from, as of the last _start_fetches
        self._fetch_ended = asyncio.Event()  # set (and replaced) whenever a fetch ends
        self._low_water = 0
        self._rtt = 0.0  # seconds a ShareFetch round that brought records takes (average)
        self._pace = 0.0  # seconds between two records handed out (average)
        self._handed = 0  # records handed out, ever
        self._handed_at_refill = 0
        self._refilled_at = 0.0
        self.lock_renewals = 0
        """Acquisition locks renewed (records whose handling outlasted a third of the lock)."""
        self.lock_expiries = 0
        """Records decided after their acquisition lock had expired: the broker may have
        given them to another member meanwhile (handled twice). Apache Kafka 4.3 answers
        such acknowledgements without an error, so they are counted here, locally."""
        self._error: BaseException | None = None
        self._closed = False
        self.lock_timeout_ms: int | None = None
        """The acquisition lock the broker last reported (ms)."""
        self.acknowledge_errors = 0
        """Acknowledgements the broker refused, counted per partition response (a late
        acknowledgement is not refused by Kafka 4.3: see ``lock_expiries``)."""
        self.acknowledgements_dropped = 0
        """Acknowledgements never delivered (a failed request, a lost share session, a
        partition no longer fetched): the broker redelivers those records once their
        lock expires."""
        # Monotonic times of the last answers, for health: a ShareFetch answered without
        # an error (or a round with nothing to fetch), a heartbeat answered without one.
        self.answered_at = self.heartbeat_at = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, set ``share.auto.offset.reset`` if asked, and join the group."""
        if self._client is not None:
            raise RuntimeError("ShareConsumer already started")
        self._client = ShareClient(
            self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=self._request_timeout_ms,
            security_options=None if self._security is None else self._security.kafka_options(),
        )
        try:
            await self._client.start()
            await self._refresh_metadata()
            if self._group_configs:
                await self._set_group_configs(self._group_configs)
        except BaseException:
            await self._client.close()
            self._client = None
            raise
        self._heartbeats = asyncio.create_task(self._guarded_heartbeats(), name="share-heartbeat")
        if self._renew:
            self._renewer = asyncio.create_task(self._guarded_renewals(), name="share-renewal")

    async def _guarded_heartbeats(self) -> None:
        try:
            await self._heartbeat_loop()
        except Exception as exc:  # surfaces in the loop, instead of a silent fencing
            self._error = exc
            self._assignment_changed.set()

    async def _guarded_renewals(self) -> None:
        try:
            await self._renew_loop()
        except Exception:
            log.exception("share group %s: lock renewal stopped", self.group_id)

    async def stop(self, *, accept_current: bool = True) -> None:
        """Acknowledge what was decided, release the rest, close the share sessions and
        leave the group. ``accept_current``: whether the record in hand is accepted
        (else released). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        client = self._client
        if client is None:
            return
        try:
            if self._current is not None:
                self._decide(self._current, proto.ACCEPT if accept_current else proto.RELEASE)
            await self._finish_fetches()  # what they acquire is released below
            while self._buffer:
                record, topic, partition, _, _ = self._buffer.popleft()
                self._pending.setdefault((self._ids[topic], partition), {})[record.offset] = (
                    proto.RELEASE
                )
            if self._renewer is not None:
                self._renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._renewer
            await self._close_sessions()
            if self._heartbeats is not None:
                self._heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._heartbeats
            await self._leave()
        finally:
            await client.close()
            self._client = None

    async def __aenter__(self) -> ShareConsumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # left by an anyio cancellation (a timeout, a task group's): close before going
        # on, not in the background (asyncio.shield alone returns at once)
        with anyio.CancelScope(shield=True):
            await asyncio.shield(self.stop(accept_current=exc_type is None))

    # -- acknowledgements -------------------------------------------------------------------

    def accept(self, msg: ShareMessage) -> None:
        """Acknowledge ``msg`` as done."""
        self._decide(msg, proto.ACCEPT)

    def release(self, msg: ShareMessage) -> None:
        """Give ``msg`` back: it is delivered again, ``delivery_count`` one higher."""
        self._decide(msg, proto.RELEASE)

    def reject(self, msg: ShareMessage) -> None:
        """Archive ``msg`` as unprocessable: it is not delivered again."""
        self._decide(msg, proto.REJECT)

    def _decide(self, msg: ShareMessage, kind: int) -> None:
        topic_id = self._ids.get(msg.topic)
        if topic_id is None:
            raise ValueError(f"{msg!r} was not consumed by this ShareConsumer")
        self._check_lock((topic_id, msg.partition), msg.offset)
        decisions = self._pending.setdefault((topic_id, msg.partition), {})
        if self._current is msg:
            self._current = None
        elif msg.offset in decisions:
            raise ValueError(f"{msg!r} was already acknowledged ({_KIND[decisions[msg.offset]]})")
        decisions[msg.offset] = kind

    async def commit(self) -> None:
        """Send the acknowledgements decided so far now (``ShareAcknowledge``), instead
        of with the next fetch."""
        client = self._require_client()
        nodes: dict[int, dict[Key, dict[int, int]]] = {}
        for node, session in self._sessions.items():
            for key in list(self._pending):
                if key in session.partitions:
                    nodes.setdefault(node, {})[key] = self._pending.pop(key)
        for node, acks in nodes.items():
            session = self._sessions[node]
            async with session.lock:
                result = await client.send(
                    node,
                    proto.share_acknowledge_request(
                        self.group_id, self.member_id, session.epoch, _ack_map(acks)
                    ),
                )
                if result.error_code in _SESSION_LOST:
                    self._sessions.pop(node, None)
                    log.warning("share session with node %s lost; acknowledgements dropped", node)
                    self.acknowledgements_dropped += sum(map(len, acks.values()))
                    continue
                if result.error_code:
                    raise ShareGroupError(
                        "ShareAcknowledge", result.error_code, result.error_message
                    )
                session.advance()
            for part in result.partitions:
                if part.error_code:
                    self._ack_failed(
                        part.topic_id, part.partition, part.error_code, part.error_message
                    )

    # -- iteration -------------------------------------------------------------------------

    def __aiter__(self) -> ShareConsumer:
        return self

    async def __anext__(self) -> ShareMessage:
        if self._current is not None:
            self._decide(self._current, proto.ACCEPT)
        if self._error is not None or self._closed or not self._buffer:
            await self._fill()
        fetching = len(self._fetching)
        msg = self._hand_out()
        if len(self._fetching) > fetching:
            # a fetch started: it sends its request now, not once the loop awaits
            await asyncio.sleep(0)
        return msg

    async def _fill(self) -> None:
        """Fetch until a record is buffered; raise the group's error, or
        :class:`StopAsyncIteration` once stopped."""
        while True:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            if self._buffer:
                return
            await self._fetch_more()

    # -- for runners that decode and acknowledge records themselves (share handlers) ------

    async def next_record(self) -> tuple[Any, str, int, int]:
        """The next acquired record, undecoded, as ``(record, topic, partition,
        delivery_count)``; nothing is accepted implicitly: every record must be
        settled with :meth:`settle`. Raises :class:`StopAsyncIteration` once stopped."""
        if self._error is not None or self._closed or not self._buffer:
            await self._fill()
        return self._next_buffered()

    def _next_buffered(self) -> tuple[Any, str, int, int]:
        """The next buffered record, now held (its lock counts from its fetch); the
        next fetch starts once few records are left (see :meth:`_refilled`)."""
        record, topic, partition, count, fetched = self._buffer.popleft()
        self._held[((self._ids[topic], partition), record.offset)] = fetched
        self._handed += 1
        if len(self._buffer) < self._low_water and len(self._fetching) < self._nodes:
            self._start_fetches()
        return record, topic, partition, count

    @property
    def buffered(self) -> int:
        """Records fetched and not handed out yet (:meth:`next_record` returns one of
        them without waiting)."""
        return len(self._buffer)

    def settle(self, topic: str, partition: int, offset: int, kind: int) -> None:
        """Acknowledge a record from :meth:`next_record` (``kind``: ACCEPT, RELEASE or
        REJECT of ``asyncconsumer._share._protocol``)."""
        key = (self._ids[topic], partition)
        self._check_lock(key, offset)
        self._pending.setdefault(key, {})[offset] = kind

    def _check_lock(self, key: Key, offset: int) -> None:
        since = self._held.pop((key, offset), None)
        if since is None or self.lock_timeout_ms is None:
            return
        if time.monotonic() - since > self.lock_timeout_ms / 1000:
            self.lock_expiries += 1
            log.warning(
                "share group %s: %s[%s]@%s was decided after its acquisition lock "
                "(%d ms) expired; another member may have handled it too",
                self.group_id,
                self._names.get(key[0], key[0]),
                key[1],
                offset,
                self.lock_timeout_ms,
            )

    def _hand_out(self) -> ShareMessage:
        record, topic, partition, count = self._next_buffered()
        key, value = record.key, record.value
        what = "key"
        try:
            if key is not None and self._key_codec is not None:
                key = self._key_codec(key)
            what = "value"
            if value is not None and self._value_codec is not None:
                value = self._value_codec(value)
        except Exception as exc:
            held = (self._ids[topic], partition)
            del self._held[(held, record.offset)]  # decided here: released
            self._pending.setdefault(held, {})[record.offset] = proto.RELEASE
            raise DeserializationError(topic, partition, record.offset, what) from exc
        msg = ShareMessage(
            topic,
            partition,
            record.offset,
            key,
            value,
            record.headers,
            record.timestamp,
            count,
        )
        self._current = msg
        return msg

    @property
    def joined(self) -> bool:
        """Whether the group coordinator has accepted this member (it heartbeats)."""
        return self._epoch > 0

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions the group coordinator assigned to this member (others may
        have the same ones: share groups assign partitions to several members)."""
        return {TopicPartition(self._names[t], p) for t, p in self._assigned if t in self._names}

    # -- internals: metadata and group membership ---------------------------------------------

    def _require_client(self) -> ShareClient:
        if self._client is None:
            raise ConsumerStoppedError("the ShareConsumer is not running")
        return self._client

    async def _any_node(self) -> int:
        return await self._require_client().any_node()

    async def _refresh_metadata(self) -> None:
        client = self._require_client()
        result = await client.send(await self._any_node(), proto.metadata_request(self.topics))
        for topic in result.topics:
            if topic.error_code or topic.name is None:
                continue
            self._names[topic.topic_id] = topic.name
            self._ids[topic.name] = topic.topic_id
            for part in topic.partitions:
                if part.leader >= 0:
                    self._leaders[(topic.topic_id, part.partition)] = part.leader

    async def _set_group_configs(self, configs: Mapping[str, str]) -> None:
        client = self._require_client()
        result = await client.send(
            await self._any_node(), proto.group_config_request(self.group_id, configs)
        )
        if result.error_code:
            raise ShareGroupError(
                f"setting group configs {configs}", result.error_code, result.error_message
            )

    async def _heartbeat_loop(self) -> None:
        client = self._require_client()
        subscribed: list[str] | None = self.topics
        while True:
            try:
                if self._coordinator is None:
                    self._coordinator = await client.find_coordinator(self.group_id)
                result = await client.send_coordinator(
                    self._coordinator,
                    proto.share_heartbeat_request(
                        self.group_id, self.member_id, self._epoch, subscribed
                    ),
                )
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:
                log.debug("share heartbeat: %r; retrying", exc)
                self._coordinator = None
                await asyncio.sleep(_RETRY_BACKOFF)
                continue
            code = result.error_code
            if code in _RETRY_COORDINATOR:
                self._coordinator = None
                await asyncio.sleep(_RETRY_BACKOFF)
                continue
            if code == COORDINATOR_LOAD_IN_PROGRESS:
                await asyncio.sleep(_RETRY_BACKOFF)
                continue
            if code in _REJOIN:
                log.warning("share group %s: member fenced (%s); rejoining", self.group_id, code)
                self._epoch = 0
                subscribed = self.topics
                self._set_assignment(set())
                continue
            if code:
                self._error = ShareGroupError("ShareGroupHeartbeat", code, result.error_message)
                self._assignment_changed.set()
                return
            subscribed = None
            self.heartbeat_at = time.monotonic()
            if result.member_id:
                self.member_id = result.member_id
            self._epoch = result.member_epoch
            if result.assignment is not None:
                assigned = {(t, p) for t, parts in result.assignment.items() for p in parts}
                if any(t not in self._names for t, _ in assigned):
                    with contextlib.suppress(KafkaError):
                        await self._refresh_metadata()
                self._set_assignment(assigned)
            await asyncio.sleep(max(result.heartbeat_interval_ms, 100) / 1000)

    def _set_assignment(self, assigned: set[Key]) -> None:
        if assigned != self._assigned:
            log.info(
                "share group %s: assigned %s",
                self.group_id,
                sorted(f"{self._names.get(t, t)}[{p}]" for t, p in assigned),
            )
        self._assigned = assigned
        self._assignment_changed.set()

    async def _leave(self) -> None:
        client = self._client
        if client is None or self._coordinator is None or self._epoch <= 0:
            return
        with contextlib.suppress(KafkaError, OSError):
            await client.send_coordinator(
                self._coordinator,
                proto.share_heartbeat_request(self.group_id, self.member_id, -1, None),
            )

    # -- internals: fetching -------------------------------------------------------------------

    def _start_fetches(self) -> bool:
        """Start a ShareFetch to every broker to fetch from that has none in flight,
        each in a task of its own: a broker with no records long-polls without holding
        up the others. While an assigned partition's leader is unknown, or nothing is
        to be fetched, a task of its own (key ``None``) refreshes the metadata or waits
        for an assignment. True if a task started."""
        fetching = self._fetching
        now = time.monotonic()
        handed = self._handed - self._handed_at_refill
        if handed > 0 and self._refilled_at:  # the pace since records last arrived
            pace = (now - self._refilled_at) / handed
            self._pace = pace if not self._pace else 0.7 * self._pace + 0.3 * pace
        wanted: dict[int, set[Key]] = {}
        unknown = False
        for key in self._assigned:
            leader = self._leaders.get(key)
            if leader is None:
                unknown = True
            else:
                wanted.setdefault(leader, set()).add(key)
        nodes = set(wanted) | {n for n, s in self._sessions.items() if s.partitions}
        self._nodes = max(len(nodes), 1)
        started = False
        for node in nodes:
            if node not in fetching:
                task = asyncio.create_task(
                    self._fetch_task(node, wanted.get(node, set()), now), name="share-fetch"
                )
                fetching[node] = task
                started = True
        if (unknown or not nodes) and None not in fetching:
            fetching[None] = asyncio.create_task(self._plan_task(not nodes), name="share-plan")
            started = True
        return started

    async def _fetch_task(self, node: int, wanted: set[Key], started: float) -> None:
        try:
            if await self._fetch_from(node, wanted):
                self._refilled(time.monotonic() - started)
        except Exception as exc:  # surfaces in the loop
            self._error = exc
        finally:
            self._ended(node)

    async def _plan_task(self, idle: bool) -> None:
        """Learn the leaders of assigned partitions; ``idle`` (nothing to fetch from):
        wait for an assignment, at most ``fetch_max_wait_ms``."""
        try:
            if any(key not in self._leaders for key in self._assigned):
                with contextlib.suppress(KafkaError):
                    await self._refresh_metadata()
            if idle:
                self._drop_stale_acks()
                self._assignment_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._assignment_changed.wait(), self._max_wait_ms / 1000
                    )
                self.answered_at = time.monotonic()  # nothing to fetch: idle, not stuck
        except Exception as exc:  # surfaces in the loop
            self._error = exc
        finally:
            self._ended(None)

    def _refilled(self, rtt: float) -> None:
        """Records arrived, after ``rtt`` seconds. The next fetch starts once the
        buffer holds fewer records than the loop hands out in two such rounds (at most
        ``max_records``), so that it is back about when the buffer runs out: records
        flow without a pause for the round trip, and a fetched record waits about as
        long as it would without the early start. While records are handed out slower
        than one per two rounds, the next fetch starts only once the buffer is empty."""
        self._rtt = rtt if not self._rtt else 0.7 * self._rtt + 0.3 * rtt
        if self._pace > 0:
            self._low_water = min(self._max_records, int(2 * self._rtt / self._pace))
        self._refilled_at = time.monotonic()
        self._handed_at_refill = self._handed

    async def _fetch_more(self) -> None:
        """Start the fetches not in flight, and wait until one of them ends (they go
        on if the wait is cancelled; :meth:`stop` releases what they bring). Any number
        of callers may wait at once (a share handler's workers)."""
        if len(self._fetching) < self._nodes or not self._fetching:
            self._start_fetches()
        await self._fetch_ended.wait()

    def _ended(self, key: int | None) -> None:
        """A fetch task ends: it leaves ``_fetching``, and the waiters wake."""
        if self._fetching.get(key) is asyncio.current_task():
            del self._fetching[key]
        self._fetch_ended.set()
        self._fetch_ended = asyncio.Event()

    async def _finish_fetches(self) -> None:
        """Wait for the fetches in flight (a long poll ends within
        ``fetch_max_wait_ms``)."""
        tasks = list(self._fetching.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._max_wait_ms / 1000 + 5)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _fetch_from(self, node: int, wanted: set[Key]) -> int:
        """One ShareFetch to ``node``; the number of records it buffered."""
        session = self._sessions.setdefault(node, _Session())
        async with session.lock:
            return await self._fetch_in(node, session, wanted)

    async def _fetch_in(self, node: int, session: _Session, wanted: set[Key]) -> int:
        client = self._require_client()
        if session.epoch == 0:
            session.partitions = set()
        add = wanted - session.partitions
        # acknowledgements go only to an open session (not with the request opening one)
        acks = {}
        if session.epoch > 0:
            acks = {k: self._pending.pop(k) for k in list(self._pending) if k in session.partitions}
        # a partition leaves the session once its acknowledgements went out
        forget = {key for key in session.partitions - wanted if key not in acks}
        request = proto.share_fetch_request(
            self.group_id,
            self.member_id,
            session.epoch,
            max_wait_ms=self._max_wait_ms,
            min_bytes=1,
            max_bytes=self._max_bytes,
            max_records=self._max_records,
            batch_size=self._max_records,
            partitions=_group(add),
            acks=_ack_map(acks),
            forgotten=_group(forget),
            acquire_mode=self._acquire_mode,
        )
        sent_at = time.monotonic()  # the locks start after this (conservative)
        try:
            result = await client.send(node, request)
        except KafkaError as exc:
            log.warning("ShareFetch to node %s failed: %r; acknowledgements dropped", node, exc)
            self.acknowledgements_dropped += sum(map(len, acks.values()))
            self._sessions.pop(node, None)
            with contextlib.suppress(KafkaError):
                await self._refresh_metadata()
            await asyncio.sleep(_RETRY_BACKOFF)
            return 0
        if result.error_code in _SESSION_LOST:
            log.warning(
                "share session with node %s lost (%s); %d acknowledgement(s) dropped",
                node,
                result.error_code,
                sum(len(v) for v in acks.values()),
            )
            self.acknowledgements_dropped += sum(map(len, acks.values()))
            self._sessions.pop(node, None)
            return 0
        if result.error_code:
            self._error = ShareGroupError("ShareFetch", result.error_code, result.error_message)
            return 0
        self.answered_at = time.monotonic()
        session.advance()
        buffered = len(self._buffer)
        session.partitions = (session.partitions | add) - forget
        self.lock_timeout_ms = result.lock_timeout_ms
        for part in result.partitions:
            key = (part.topic_id, part.partition)
            if part.ack_error_code:
                self._ack_failed(
                    part.topic_id, part.partition, part.ack_error_code, part.ack_error_message
                )
            if part.error_code in _LEADER_MOVED:
                session.partitions.discard(key)
                self._leaders.pop(key, None)
                continue
            if part.error_code:
                log.warning(
                    "ShareFetch %s[%s]: Kafka error %s %s",
                    self._names.get(part.topic_id),
                    part.partition,
                    part.error_code,
                    part.error_message or "",
                )
                continue
            if part.acquired:
                self._take(key, part.records, part.acquired, sent_at)
        return len(self._buffer) - buffered

    def _take(
        self,
        key: Key,
        records: bytes | None,
        acquired: list[proto.AcquiredRange],
        locked_at: float,
    ) -> None:
        """Buffer the acquired records of a partition's response; acquired offsets
        without a record (control records, compacted away) are acknowledged as gaps."""
        topic = self._names[key[0]]
        partition = key[1]
        ranges = sorted(acquired, key=lambda r: r.first)
        seen: set[int] = set()
        if records:
            i = 0
            for control, batch in record_batches(records):
                if control:
                    continue
                for record in batch:
                    offset = record.offset
                    while i < len(ranges) and ranges[i].last < offset:
                        i += 1
                    if i == len(ranges):
                        break
                    if offset >= ranges[i].first:
                        seen.add(offset)
                        self._buffer.append(
                            (record, topic, partition, ranges[i].delivery_count, locked_at)
                        )
        gaps = {
            offset: proto.GAP
            for r in ranges
            for offset in range(r.first, r.last + 1)
            if offset not in seen
        }
        if gaps:
            self._pending.setdefault(key, {}).update(gaps)

    def _ack_failed(
        self, topic_id: uuid.UUID, partition: int, code: int, message: str | None
    ) -> None:
        self.acknowledge_errors += 1
        log.warning(
            "share group %s: acknowledgements for %s[%s] refused (Kafka error %s%s)%s",
            self.group_id,
            self._names.get(topic_id, topic_id),
            partition,
            code,
            f": {message}" if message else "",
            "; their acquisition lock had expired: another member may get them"
            if code == INVALID_RECORD_STATE
            else "",
        )

    def _drop_stale_acks(self) -> None:
        in_session = set().union(*(s.partitions for s in self._sessions.values()))
        for key in [k for k in self._pending if k not in in_session]:
            dropped = self._pending.pop(key)
            self.acknowledgements_dropped += len(dropped)
            log.warning(
                "share group %s: %d acknowledgement(s) for %s[%s] dropped: the partition is no "
                "longer fetched; the broker redelivers them after their lock expires",
                self.group_id,
                len(dropped),
                self._names.get(key[0], key[0]),
                key[1],
            )

    async def _renew_loop(self) -> None:
        """Renew the locks of records handed out a third of the lock duration ago and
        still undecided (KIP-1222: ShareAcknowledge v2, acknowledge type Renew)."""
        client = self._require_client()
        while True:
            third = (self.lock_timeout_ms or 30_000) / 3000
            # at least every second: the lock duration is known after the first fetch
            await asyncio.sleep(min(third / 2, 1.0))
            now = time.monotonic()
            due = [held for held, since in self._held.items() if now - since >= third]
            if not due:
                continue
            for node, session in list(self._sessions.items()):
                offsets: dict[Key, dict[int, int]] = {}
                for key, offset in due:
                    if key in session.partitions:
                        offsets.setdefault(key, {})[offset] = proto.RENEW
                if not offsets or session.epoch == 0:
                    continue
                try:
                    async with session.lock:
                        if self._sessions.get(node) is not session or session.epoch == 0:
                            continue
                        result = await client.send(
                            node,
                            proto.share_acknowledge_request(
                                self.group_id,
                                self.member_id,
                                session.epoch,
                                _ack_map(offsets),
                                renew=True,
                            ),
                        )
                        if result.error_code in _SESSION_LOST:
                            self._sessions.pop(node, None)
                            continue
                        if not result.error_code:
                            session.advance()
                except KafkaError as exc:
                    if "ShareAcknowledge versions" in str(exc):
                        log.warning("the broker cannot renew share locks (%s); not renewing", exc)
                        return
                    log.warning("renewing share locks with node %s failed: %r", node, exc)
                    continue
                if result.error_code:
                    log.warning(
                        "renewing share locks refused (Kafka error %s %s); not renewing",
                        result.error_code,
                        result.error_message or "",
                    )
                    return
                renewed_at = time.monotonic()
                for part in result.partitions:
                    key = (part.topic_id, part.partition)
                    if part.error_code:
                        self._ack_failed(
                            part.topic_id, part.partition, part.error_code, part.error_message
                        )
                        continue
                    for offset in offsets.get(key, {}):
                        if (key, offset) in self._held:
                            self._held[(key, offset)] = renewed_at
                            self.lock_renewals += 1

    async def _close_sessions(self) -> None:
        """ShareAcknowledge with epoch -1 to every broker with a share session: the
        last acknowledgements, and the session is closed."""
        client = self._require_client()
        for node, session in list(self._sessions.items()):
            if session.epoch == 0:
                continue
            acks = {k: self._pending.pop(k) for k in list(self._pending) if k in session.partitions}
            try:
                async with session.lock:
                    result = await client.send(
                        node,
                        proto.share_acknowledge_request(
                            self.group_id, self.member_id, -1, _ack_map(acks)
                        ),
                    )
            except KafkaError as exc:
                log.warning("closing the share session with node %s failed: %r", node, exc)
                self.acknowledgements_dropped += sum(map(len, acks.values()))
                continue
            if result.error_code:
                log.warning(
                    "closing the share session with node %s: Kafka error %s %s",
                    node,
                    result.error_code,
                    result.error_message or "",
                )
            for part in result.partitions:
                if part.error_code:
                    self._ack_failed(
                        part.topic_id, part.partition, part.error_code, part.error_message
                    )
        self._sessions.clear()
        self._drop_stale_acks()


def _group(keys: Iterable[Key]) -> dict[uuid.UUID, list[int]]:
    grouped: dict[uuid.UUID, list[int]] = {}
    for topic_id, partition in sorted(keys):
        grouped.setdefault(topic_id, []).append(partition)
    return grouped


def _ack_map(acks: dict[Key, dict[int, int]]) -> dict[uuid.UUID, dict[int, list[proto.AckBatch]]]:
    out: dict[uuid.UUID, dict[int, list[proto.AckBatch]]] = {}
    for (topic_id, partition), decisions in acks.items():
        if decisions:
            out.setdefault(topic_id, {})[partition] = proto.ack_batches(decisions)
    return out
