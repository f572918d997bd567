"""Share handlers: ``@app.share_handler`` records run by a pool of workers.

One :class:`ShareRuntime` per app runs every share handler: for each, one
:class:`~._consumer.ShareConsumer` (the share group) and ``concurrency`` worker
tasks (a fixed pool: no task per record) that take its records themselves (a
buffered record without a task switch; only a free worker takes one, so none waits
locked for a worker) and run them
through the handler's :class:`~.._runtime._pipeline.Processor` (decoding, middleware,
``publish_to``, retries, dead letters, counters). Outcomes become acknowledgements:

==============================================  ==================================
the processor says                              acknowledgement
==============================================  ==================================
handled (or dead-lettered)                      accept
failed, a retry allowed (``Retry``)             release after the backoff, held
                                                locally: the broker redelivers it
                                                with ``delivery_count`` + 1
failed, no retry left; ``on_failure="skip"``    reject (archived)
failed, no retry left; ``on_failure="stop"``    release, and the app stops
==============================================  ==================================

The attempt number is the broker's ``delivery_count``, so attempts are counted
across members and restarts; the broker's ``share.delivery.count.limit`` (5 by
default) caps them too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

import anyio
from anyio.abc import TaskStatus

from .._codecs import CodecSpec, resolve_codec
from .._errors import ConfigurationError
from .._handlers import handler_name
from .._message import Record
from .._retry import NO_RETRY, FailurePolicy, Retry
from .._runtime._liveness import LivenessMonitor
from .._runtime._observe import HandlerTiming
from .._runtime._pipeline import CounterMap, Handler, Middleware, Processor, compose
from .._security import Security
from .._statistics import HandlerStatistics, ShareStatistics
from . import _protocol as proto
from ._consumer import ShareConsumer, ShareMessage

__all__ = ["ShareHandlerSpec", "ShareRuntime"]

log = logging.getLogger("asyncconsumer")


class _Record(NamedTuple):
    """A record as the processor sees it (what it dead-letters), with its delivery count."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class ShareHandlerSpec:
    fn: Handler
    name: str
    topics: tuple[str, ...]
    group_id: str | None
    key_codec: CodecSpec
    value_codec: CodecSpec
    concurrency: int
    retry: Retry
    on_failure: FailurePolicy
    dead_letter_topic: str | None
    publish_to: str | None
    auto_offset_reset: Literal["earliest", "latest"] | None
    group_configs: dict[str, str]


def make_spec(
    fn: Handler,
    topics: tuple[str, ...],
    *,
    group_id: str | None,
    key_codec: CodecSpec,
    value_codec: CodecSpec,
    concurrency: int,
    retry: Retry | None,
    on_failure: FailurePolicy,
    dead_letter_topic: str | None,
    publish_to: str | None,
    auto_offset_reset: Literal["earliest", "latest"] | None,
    group_configs: dict[str, str] | None,
) -> ShareHandlerSpec:
    name = handler_name(fn)
    if not topics or not all(isinstance(t, str) and t for t in topics):
        raise ConfigurationError(f"share handler {name}: give one or more topic names")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"share handler {name}: concurrency must be an int >= 1")
    if retry is not None and not isinstance(retry, Retry):
        raise ConfigurationError(f"share handler {name}: retry must be a Retry, not {retry!r}")
    if on_failure not in ("stop", "dead_letter", "skip"):
        raise ConfigurationError(
            f"share handler {name}: on_failure must be 'stop', 'dead_letter' or 'skip'"
        )
    resolve_codec(key_codec, what="key_codec")
    resolve_codec(value_codec, what="value_codec")
    return ShareHandlerSpec(
        fn,
        name,
        topics,
        group_id,
        key_codec,
        value_codec,
        concurrency,
        retry or NO_RETRY,
        on_failure,
        dead_letter_topic,
        publish_to,
        auto_offset_reset,
        dict(group_configs or {}),
    )


def _decoder(key_codec: CodecSpec, value_codec: CodecSpec) -> Any:
    from .._errors import DeserializationError

    decode_key = resolve_codec(key_codec, what="key_codec")
    decode_value = resolve_codec(value_codec, what="value_codec")

    def decode(r: _Record) -> ShareMessage:
        key, value = r.key, r.value
        try:
            if key is not None and decode_key is not None:
                key = decode_key(key)
        except Exception as exc:
            raise DeserializationError(r.topic, r.partition, r.offset, "key") from exc
        try:
            if value is not None and decode_value is not None:
                value = decode_value(value)
        except Exception as exc:
            raise DeserializationError(r.topic, r.partition, r.offset, "value") from exc
        return ShareMessage(
            r.topic, r.partition, r.offset, key, value, r.headers, r.timestamp, r.delivery_count
        )

    return decode


class _Member:
    """One share handler while the app runs: its consumer, and what its workers run."""

    __slots__ = ("consumer", "running", "spec", "waiting", "waiting_since")

    def __init__(self, spec: ShareHandlerSpec, consumer: ShareConsumer) -> None:
        self.spec = spec
        self.consumer = consumer
        self.running: list[_Record | None] = [None] * spec.concurrency  # per worker
        self.waiting = 0  # workers waiting for a fetch (the buffer was empty)
        self.waiting_since = 0.0  # since when one has waited (monotonic)

    def statistics(self, now: float) -> tuple[HandlerStatistics, ShareStatistics]:
        consumer = self.consumer
        assigned = frozenset(consumer.assignment)
        handler = HandlerStatistics(
            partitions=len(assigned),
            in_flight=sum(record is not None for record in self.running),
            buffered=consumer.buffered,
        )
        share = ShareStatistics(
            group=consumer.group_id,
            assigned=assigned,
            joined=consumer.joined,
            heartbeat_age=now - consumer.heartbeat_at,
            # every worker busy: nothing is fetched until one is free, and that is no
            # stall; a worker waiting for records waits for a fetch that must answer
            fetch_age=now - max(consumer.answered_at, self.waiting_since) if self.waiting else 0.0,
            lock_renewals=consumer.lock_renewals,
            lock_expiries=consumer.lock_expiries,
            acknowledge_errors=consumer.acknowledge_errors,
            acknowledgements_dropped=consumer.acknowledgements_dropped,
        )
        return handler, share


class ShareRuntime:
    """Runs an app's share handlers until :meth:`request_stop` or an error.

    ``liveness``: the monitor of the app's consumer-group engine, when it has one (it
    then names the share records running when the loop is blocked too); else the
    runtime runs its own.
    """

    def __init__(
        self,
        specs: Sequence[ShareHandlerSpec],
        *,
        bootstrap_servers: str | list[str],
        group_id: str,
        middleware: Sequence[Middleware],
        producer: Any,
        counters: CounterMap,
        shutdown_timeout: float,
        timing: HandlerTiming | None = None,
        liveness: LivenessMonitor | None = None,
        security: Security | None = None,
    ) -> None:
        self.specs = list(specs)
        self.security = security
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.middleware = tuple(middleware)
        self.producer = producer
        self.counters = counters
        self.shutdown_timeout = shutdown_timeout
        self.timing = timing
        self._own_liveness = liveness is None
        # its own monitor has no consumer-group fetch loop to watch; it warns when the
        # share group coordinators stop answering heartbeats
        self.liveness = liveness or LivenessMonitor(
            self._describe_running,
            poll_stall_after=math.inf,
            unreachable_for=self._heartbeat_silence,
        )
        if liveness is not None:
            liveness.add_source(self._describe_running)
        self._members: list[_Member] = []
        self._stop = anyio.Event()
        self._waiting: set[anyio.CancelScope] = set()  # workers waiting for a fetch
        self._scope: anyio.CancelScope | None = None  # set once stopping
        self.failure: BaseException | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        """Stop now: running handlers are cancelled (their records released)."""
        self.shutdown_timeout = 0.0
        self._stop.set()
        if self._scope is not None:
            self._scope.cancel()

    def fail(self, exc: BaseException) -> None:
        """Record the first error and stop gracefully; ``run()`` raises it once stopped."""
        if self.failure is None:
            self.failure = exc
        elif exc is not self.failure:
            log.error("another error while stopping on %r", self.failure, exc_info=exc)
        self._stop.set()

    def statistics(self) -> tuple[dict[str, HandlerStatistics], dict[str, ShareStatistics]]:
        """Per share handler: its records running and fetched, and its membership."""
        now = time.monotonic()
        handlers, share = {}, {}
        for member in self._members:
            handlers[member.spec.name], share[member.spec.name] = member.statistics(now)
        return handlers, share

    def _heartbeat_silence(self) -> float:
        """Seconds since the least recent heartbeat answer of the members."""
        now = time.monotonic()
        return max((now - m.consumer.heartbeat_at for m in self._members), default=0.0)

    def _describe_running(self) -> list[str]:
        return [
            f"{member.spec.name} on {r.topic}[{r.partition}]@{r.offset}"
            for member in self._members
            for r in member.running
            if r is not None
        ]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            monitor = anyio.CancelScope()
            if self._own_liveness:
                tg.start_soon(_within, monitor, self.liveness.run)
            for spec in self.specs:
                consumer = ShareConsumer(
                    *spec.topics,
                    bootstrap_servers=self.bootstrap_servers,
                    group_id=spec.group_id or self.group_id,
                    auto_offset_reset=spec.auto_offset_reset,
                    group_configs=spec.group_configs,
                    # as many records acquired as can run at once: none waits locked
                    max_records=spec.concurrency,
                    acquire_mode="record_limit",
                    security=self.security,
                )
                await consumer.start()
                member = _Member(spec, consumer)
                self._members.append(member)
                tg.start_soon(self._serve, member)
                log.info(
                    "share handler %s: %s in share group %s, concurrency %d",
                    spec.name,
                    ", ".join(spec.topics),
                    consumer.group_id,
                    spec.concurrency,
                )
            task_status.started()
            await self._stop.wait()
            # graceful: no more records; the ones running finish (up to shutdown_timeout)
            monitor.cancel()
            for waiting in list(self._waiting):
                waiting.cancel()
            tg.cancel_scope.deadline = anyio.current_time() + self.shutdown_timeout
            self._scope = tg.cancel_scope
        if self.failure is not None:
            raise self.failure

    def _settle(self, consumer: ShareConsumer, record: _Record, kind: int) -> None:
        consumer.settle(record.topic, record.partition, record.offset, kind)
        counters = self.counters[record.topic]
        if kind == proto.ACCEPT:
            counters.accepted += 1
        elif kind == proto.RELEASE:
            counters.released += 1
        else:
            counters.rejected += 1

    async def _serve(self, member: _Member) -> None:
        spec, consumer = member.spec, member.consumer
        processor = Processor(
            compose(spec.fn, self.middleware),
            _decoder(spec.key_codec, spec.value_codec),
            name=spec.name,
            retry=spec.retry,
            on_failure=spec.on_failure,
            dead_letter_topic=spec.dead_letter_topic,
            publish_to=spec.publish_to,
            producer=self.producer,
            group_id=consumer.group_id,
            counters=self.counters,
            timing=self.timing,
        )
        try:
            async with anyio.create_task_group() as tg:
                for slot in range(spec.concurrency):
                    tg.start_soon(self._work, processor, member, slot)
            # stopping: the workers finished what they ran
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.stop()

    async def _next(self, member: _Member) -> tuple[Any, str, int, int] | None:
        """The consumer's next record: at once if one is buffered; else wait for a
        fetch (what a stop cancels: ``None``)."""
        consumer = member.consumer
        if consumer.buffered:
            return await consumer.next_record()  # returns without a task switch
        if not member.waiting:
            member.waiting_since = time.monotonic()
        member.waiting += 1
        try:
            with anyio.CancelScope() as waiting:
                self._waiting.add(waiting)
                try:
                    return await consumer.next_record()
                finally:
                    self._waiting.discard(waiting)
            return None
        finally:
            member.waiting -= 1

    async def _work(self, processor: Processor, member: _Member, slot: int) -> None:
        """Take the consumer's next record, run it, settle it, until stopping."""
        consumer, running, counters = member.consumer, member.running, self.counters
        while not self._stop.is_set():
            try:
                taken = await self._next(member)
            except StopAsyncIteration:
                return
            except Exception as exc:  # the share group failed (ShareGroupError)
                self.fail(exc)
                return
            if taken is None:  # stopping
                return
            raw, topic, partition, count = taken
            record = _Record(
                topic, partition, raw.offset, raw.key, raw.value, raw.headers, raw.timestamp, count
            )
            topic_counters = counters[topic]
            topic_counters.fetched += 1
            if count > 1:
                topic_counters.redelivered += 1
            if self._stop.is_set():  # taken while stopping: give it back
                self._settle(consumer, record, proto.RELEASE)
                return
            running[slot] = record
            kind = proto.RELEASE  # if cancelled, or stopping on the error
            try:
                skipped = topic_counters.skipped
                try:
                    # (a share record has a Record's fields, all the processor reads)
                    delay = await processor.process(cast(Record, record), record.delivery_count)
                except Exception as exc:  # on_failure="stop", or a dead letter failed
                    exc.add_note(
                        f"asyncconsumer: handling {record.topic}[{record.partition}]"
                        f"@{record.offset} (delivery {record.delivery_count}); released"
                    )
                    self.fail(exc)
                    return
                if delay is None:
                    kind = proto.REJECT if topic_counters.skipped > skipped else proto.ACCEPT
                else:
                    # a retry: hold the record (its lock) for the backoff, then
                    # give it back; it comes again with delivery_count + 1
                    await anyio.sleep(delay)
            finally:
                running[slot] = None
                self._settle(consumer, record, kind)


async def _within(scope: anyio.CancelScope, fn: Any) -> None:
    with scope:
        await fn()
