"""The aiokafka implementation of the client seam, with its work-arounds.

Nothing else in asyncconsumer imports aiokafka's consumer or producer: the
runtime sees a :class:`~._protocols.ConsumerClient` / ``ProducerClient``.

:class:`AiokafkaConsumer` is aiokafka's ``AIOKafkaConsumer`` with what the
runtime needs beyond its public API:

- **a clean stop** (:meth:`AiokafkaConsumer.stop`): aiokafka 0.14's fetcher
  ``close()`` cancels its fetch tasks and awaits them; a task sleeping in its retry
  backoff (the broker is down) lets that ``CancelledError`` out of ``stop()``,
  before the connections are closed. A ``CancelledError`` out of ``stop()`` while
  our own task is not being cancelled (``Task.cancelling() == 0``) is that
  internal one: the close is finished and ``stop()`` returns.
- **commit metadata** (:meth:`~AiokafkaConsumer.committed_metadata`): aiokafka's
  public ``committed()`` drops it; the coordinator's ``fetch_committed_offsets``
  keeps it.
- **a commit while revoking** (``commit(..., revoking=True)``): a pattern
  subscription that matched a new topic replaces aiokafka's subscription object
  before the rejoin, and ``commit()`` then refuses ("No partitions assigned")
  although the member still owns its partitions for this generation; the
  coordinator's commit, which aiokafka itself uses before a rejoin, does not look
  at the assignment. (This uses the private ``_coordinator``: aiokafka is pinned
  below 0.15 for that reason.)
- **reachability** (:meth:`~AiokafkaConsumer.watch`): every request of the member
  (fetch, heartbeat, join, commit, coordinator and metadata look-ups) goes through
  ``AIOKafkaClient.send``, which is timed.
- **refused connections** (``start()``, :meth:`~AiokafkaConsumer.on_refused`; the
  producer too, :class:`AiokafkaProducer`): a start that failed because the broker
  refused the credentials or the TLS handshake raises
  :class:`~asyncconsumer.AuthenticationError` naming the cause, and a started client
  refused for good calls back, instead of retrying forever (see ``_refusals``).

:func:`install` (run when this module is imported, before any client exists)
patches two aiokafka defects that Apache Kafka brings out, in aiokafka 0.12-0.14:

- **OffsetFetch request-level errors.** From version 2 the OffsetFetch response
  carries a request-level ``error_code`` (with no partitions) for
  ``COORDINATOR_LOAD_IN_PROGRESS`` and ``NOT_COORDINATOR``; aiokafka reads only the
  per-partition codes, so it takes "the coordinator is loading" (right after a
  broker restart or a coordinator move) for "no committed offset", and the consumer
  falls back to ``auto_offset_reset``: records run again (``earliest``) or are
  skipped (``latest``). The patch raises the request-level error, so aiokafka's
  own retry loop (``fetch_committed_offsets``) retries it, as the Java client does.
- **Long polls behind unconsumed records.** aiokafka sends one fetch at a time to a
  broker, and none for a partition whose fetched records were not consumed yet; once
  those have waited 0.1 s (its prefetch backoff), it fetches the broker's other
  partitions without it. If those are caught up, that fetch is a long poll of
  ``fetch_max_wait_ms`` (500 ms by default), and when the records left behind are
  consumed meanwhile, their partition's next fetch waits for the long poll to end: a
  partition with a backlog stalls once per fetch response, behind partitions with
  nothing to read (the engine holds records back when a lane is full, so this is
  common). The patch makes fetches wait at most :data:`HELD_FETCH_WAIT_MS` while
  any fetched record is unconsumed, and ``fetch_max_wait_ms`` otherwise.

It also lets our consumers skip a step of aiokafka's record decoding (not a defect:
a cost). aiokafka turns each record of a fetch response into a ``ConsumerRecord``
(a dataclass of 11 fields, built in Python), which the runtime then copied into a
:class:`~asyncconsumer.Message`: two objects per record, about 0.75 us of the
2-2.7 us a record costs to fetch and decode. A consumer made by this transport
passes :data:`RAW_MESSAGES` as aiokafka's ``key_deserializer`` (users cannot:
asyncconsumer has codecs instead), and the fetch responses of such a consumer are
read by :class:`_MessageRecords`, which builds the :data:`~asyncconsumer._message.Record`
directly, inline in its reading of the batches, and hands aiokafka's ``getall`` its
generator itself (no call per record but the generator's own step). Every other
consumer in the process keeps aiokafka's own class.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import aiokafka.errors as kafka_errors
import anyio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from .._errors import AuthenticationError, ConfigurationError
from .._message import Message
from . import _refusals
from ._protocols import ConsumerClient, ProducerClient, Reachability, RebalanceListener

__all__ = [
    "CONSUMER_OPTIONS",
    "HELD_FETCH_WAIT_MS",
    "PRODUCER_OPTIONS",
    "RAW_MESSAGES",
    "AiokafkaConsumer",
    "AiokafkaProducer",
    "AiokafkaTransport",
    "check_offset_fetch",
    "fetch_wait_ms",
    "install",
]

log = logging.getLogger("asyncconsumer")

# The keyword arguments aiokafka's clients accept (options are checked against them
# whatever the transport, so that a configuration means the same everywhere).
CONSUMER_OPTIONS = frozenset(inspect.signature(AIOKafkaConsumer.__init__).parameters) - {
    "self",
    "topics",
    "bootstrap_servers",
    "group_id",
    "auto_offset_reset",
}
PRODUCER_OPTIONS = frozenset(inspect.signature(AIOKafkaProducer.__init__).parameters) - {"self"}

# The longest a fetch waits for data while fetched records are left unconsumed:
# what a partition whose records were held back may wait for its next fetch.
HELD_FETCH_WAIT_MS = 50

_COORDINATOR_MOVED = (
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupCoordinatorNotAvailableError,
)


class AiokafkaTransport:
    """Clients of a real cluster, through aiokafka."""

    def __init__(self, bootstrap_servers: str | list[str]) -> None:
        self.bootstrap_servers = bootstrap_servers

    def consumer(
        self, *, group_id: str | None, auto_offset_reset: str, options: Mapping[str, Any]
    ) -> ConsumerClient:
        """Create (not start) the consumer, auto-commit off. Must run inside the event loop."""
        try:
            return AiokafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=group_id,
                auto_offset_reset=auto_offset_reset,
                enable_auto_commit=False,
                key_deserializer=RAW_MESSAGES,
                **options,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid Kafka consumer settings: {exc}") from exc

    def producer(self, options: Mapping[str, Any]) -> ProducerClient:
        try:
            client = AiokafkaProducer(bootstrap_servers=self.bootstrap_servers, **options)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid Kafka producer settings: {exc}") from exc
        return cast(ProducerClient, client)  # aiokafka's producer is the producer client


class AiokafkaProducer(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's producer, whose refused connections are named (see the module
    docstring); every other method is aiokafka's own."""

    async def start(self) -> None:
        await _refusals.start_checked(super().start, self)

    def on_refused(self, callback: Callable[[AuthenticationError], None]) -> None:
        _refusals.on_security_failure(self, lambda failure: callback(failure.error()))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka wants a ``ConsumerRebalanceListener`` subclass; ours is a protocol."""

    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._listener.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._listener.on_partitions_assigned(assigned)


class AiokafkaConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """aiokafka's consumer as a :class:`~._protocols.ConsumerClient` (see the module
    docstring); every other method is aiokafka's own."""

    def subscribe(
        self,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        listener: RebalanceListener | None = None,
    ) -> None:
        wrapped = _Listener(listener) if listener is not None else None
        super().subscribe(topics=topics, pattern=pattern, listener=wrapped)

    async def commit(
        self, offsets: Mapping[TopicPartition, OffsetAndMetadata], *, revoking: bool = False
    ) -> None:
        try:
            await super().commit(dict(offsets))
        except kafka_errors.IllegalStateError:
            if not revoking:
                raise
            await self._coordinator.commit_offsets(None, dict(offsets))

    async def committed_metadata(
        self, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        found: dict[
            TopicPartition, OffsetAndMetadata
        ] = await self._coordinator.fetch_committed_offsets(list(partitions))
        return found

    async def stop(self) -> None:
        """``stop()`` (commits nothing, leaves the group), shielded, in any state of
        the cluster; see the module docstring."""
        with anyio.CancelScope(shield=True):
            try:
                await super().stop()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                ours = task is not None and task.cancelling() > 0
                await finish_stop(self)
                if ours:
                    raise
                log.debug("aiokafka's fetcher let its own cancellation out of stop(); closed")

    async def start(self) -> None:
        await _refusals.start_checked(super().start, self)

    def on_refused(self, callback: Callable[[AuthenticationError], None]) -> None:
        _refusals.on_security_failure(self, lambda failure: callback(failure.error()))

    def watch(self, reachability: Reachability) -> None:
        watch_requests(self, reachability)

    def request_rejoin(self) -> None:
        self._coordinator.request_rejoin()


async def finish_stop(client: Any) -> None:
    """What aiokafka's ``stop()`` did not get to: the other fetch tasks and the connections."""
    fetcher = getattr(client, "_fetcher", None)
    pending = [task for task in getattr(fetcher, "_pending_tasks", ()) if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    inner = getattr(client, "_client", None)
    if inner is not None:
        try:
            await inner.close()
        except Exception as exc:
            log.warning("closing the Kafka connections failed: %r", exc)


def watch_requests(client: Any, reachability: Reachability) -> None:
    """Time every request ``client`` (an ``AIOKafkaConsumer``) sends, into
    ``reachability``: call before ``client.start()``."""
    inner = getattr(client, "_client", None)
    send: Callable[..., Awaitable[Any]] | None = getattr(inner, "send", None)
    if send is None:  # another aiokafka: no reachability check, never unready for it
        log.debug("cannot watch aiokafka's requests: reachability is not checked")
        reachability.local = True
        return

    @functools.wraps(send)
    async def timed_send(*args: Any, **kwargs: Any) -> Any:
        reachability.in_flight += 1
        try:
            response = await send(*args, **kwargs)
        except Exception:
            reachability.failing = True
            raise
        finally:
            reachability.in_flight -= 1
        reachability.last_response = time.monotonic()
        reachability.failing = False
        return response

    inner.send = timed_send  # type: ignore[union-attr]


# -- patches of aiokafka itself ---------------------------------------------------------


def check_offset_fetch(coordinator: Any, response: Any) -> None:
    """Raise an OffsetFetch response's request-level error (marking the coordinator
    dead when it moved), as aiokafka does for the per-partition ones."""
    code = getattr(response, "error_code", 0)
    if code:
        error_type = kafka_errors.for_code(code)
        if issubclass(error_type, _COORDINATOR_MOVED):
            coordinator.coordinator_dead()
        raise error_type()


def fetch_wait_ms(configured: int, unconsumed: bool) -> int:
    """How long the next fetch may wait for data (see the module docstring)."""
    return min(configured, HELD_FETCH_WAIT_MS) if unconsumed else configured


class _RawMessages:
    """The marker :data:`RAW_MESSAGES`: never called (``_MessageRecords`` ignores it)."""

    def __call__(self, key: bytes | None) -> bytes | None:  # pragma: no cover
        return key

    def __repr__(self) -> str:
        return "RAW_MESSAGES"


RAW_MESSAGES = _RawMessages()
"""Passed as aiokafka's ``key_deserializer``: this consumer's fetched records are
:data:`~asyncconsumer._message.Record` objects (see the module docstring)."""

_PartitionRecords: Any = aiokafka_fetcher.PartitionRecords


class _MessageRecords(_PartitionRecords):  # type: ignore[misc]
    """aiokafka's ``PartitionRecords`` building a :data:`~asyncconsumer._message.Record` per record.

    It reads a fetch response's batches as aiokafka's ``_unpack_records`` does
    (CRC check, aborted transactions under ``read_committed``, control batches,
    records below the fetch offset, the position after a compacted batch), with the
    record built inline: no ``_consumer_record`` call per record. And ``iter()``
    returns that generator itself, so that ``FetchResult.getall`` loops over it
    with no Python-level ``__next__`` per record (aiokafka's ``__next__`` stays, for
    ``getone``). Together about 0.25 us less per record than a ``_consumer_record``
    override (0.55 against 0.8 us in a decode loop of 100-byte records).
    """

    def __iter__(self) -> Any:
        records = self._records_iterator
        return iter(()) if records is None else records

    def _unpack_records(self) -> Any:
        topic, partition = self._tp
        records = self._records
        committed = self._isolation_level == aiokafka_fetcher.READ_COMMITTED
        make, message = tuple.__new__, Message
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                # Closes this iterator; the batches are fetched again.
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
            if committed and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            for record in batch:
                offset = record.offset
                if offset < self.next_fetch_offset:
                    continue  # (a compressed message set of the old formats)
                msg = make(
                    message,
                    (
                        topic,
                        partition,
                        offset,
                        record.key,
                        record.value,
                        tuple(record.headers),
                        record.timestamp,
                    ),
                )
                self.next_fetch_offset = offset + 1
                yield msg
            # The batch's last offset (a compacted batch may end below it).
            self.next_fetch_offset = batch.next_offset
        self._records_iterator = None  # (the generator's frame holds self)


def _partition_records(tp: TopicPartition, records: Any, *args: Any) -> Any:
    # (tp, records, aborted_transactions, fetch_offset, key_deserializer, ...)
    if args[2] is RAW_MESSAGES:
        return _MessageRecords(tp, records, *args)
    return _PartitionRecords(tp, records, *args)


def install() -> None:
    """Patch aiokafka's GroupCoordinator and Fetcher once (see the module docstring)."""
    original = GroupCoordinator._send_req
    if getattr(original, "_asyncconsumer_patched", False):
        return
    _install_fetch_wait()
    needed = ("_unpack_records", "_consume_aborted_up_to", "_contains_abort_marker")
    missing = [name for name in needed if not callable(getattr(_PartitionRecords, name, None))]
    if missing or not hasattr(aiokafka_fetcher, "READ_COMMITTED"):
        raise ImportError(  # aiokafka is pinned to versions that have them
            f"this aiokafka's fetcher has no {missing or 'READ_COMMITTED'}: asyncconsumer "
            "supports aiokafka 0.12-0.14"
        )
    aiokafka_fetcher.PartitionRecords = _partition_records

    async def _send_req(self: GroupCoordinator, request: Any) -> Any:
        response = await original(self, request)
        if isinstance(request, OffsetFetchRequest):
            check_offset_fetch(self, response)
        return response

    _send_req._asyncconsumer_patched = True  # type: ignore[attr-defined]
    GroupCoordinator._send_req = _send_req
    _refusals.install()


def _install_fetch_wait() -> None:
    original = Fetcher._get_actions_per_node

    def _get_actions_per_node(self: Fetcher, assignment: Any) -> Any:
        # Called by the fetch routine each time before it builds the fetch requests,
        # which read _fetch_max_wait_ms (aiokafka 0.12-0.14).
        configured = self.__dict__.setdefault(
            "_asyncconsumer_fetch_max_wait_ms", self._fetch_max_wait_ms
        )
        self._fetch_max_wait_ms = fetch_wait_ms(configured, bool(self._records))
        return original(self, assignment)

    Fetcher._get_actions_per_node = _get_actions_per_node


install()  # before any client exists
