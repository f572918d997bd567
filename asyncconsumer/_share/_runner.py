"""Share handlers: ``@app.share_handler`` records run by a pool of workers.

One :class:`ShareRuntime` per app runs every share handler: for each, one
:class:`~._consumer.ShareConsumer` (the share group) and ``concurrency`` worker tasks
(a fixed pool: no task per record) that take its records and run them through the
handler's :class:`~.._runtime._pipeline.Processor` (decoding, middleware,
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import anyio
from anyio.abc import TaskStatus

from .._codecs import CodecSpec, resolve_codec
from .._errors import ConfigurationError
from .._handlers import handler_name
from .._retry import NO_RETRY, FailurePolicy, Retry
from .._runtime._pipeline import CounterMap, Handler, Middleware, Processor, compose
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


class ShareRuntime:
    """Runs an app's share handlers until :meth:`request_stop` or an error."""

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
    ) -> None:
        self.specs = list(specs)
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.middleware = tuple(middleware)
        self.producer = producer
        self.counters = counters
        self.shutdown_timeout = shutdown_timeout
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

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
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
                )
                await consumer.start()
                tg.start_soon(self._serve, spec, consumer)
            task_status.started()
            await self._stop.wait()
            # graceful: no more records; the ones running finish (up to shutdown_timeout)
            for waiting in list(self._waiting):
                waiting.cancel()
            tg.cancel_scope.deadline = anyio.current_time() + self.shutdown_timeout
            self._scope = tg.cancel_scope
        if self.failure is not None:
            raise self.failure

    async def _serve(self, spec: ShareHandlerSpec, consumer: ShareConsumer) -> None:
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
        )
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(spec.concurrency):
                    tg.start_soon(self._work, processor, consumer)
            # stopping: the workers finished what they ran
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.stop()

    async def _work(self, processor: Processor, consumer: ShareConsumer) -> None:
        """Take the consumer's next record, run it, settle it, until stopping. Only a
        free worker takes a record (none waits locked for one), and a buffered record
        is taken without a task switch; waiting for a fetch is what a stop cancels."""
        while not self._stop.is_set():
            taken = None
            try:
                if consumer.buffered:
                    taken = await consumer.next_record()  # returns at once
                else:
                    with anyio.CancelScope() as waiting:
                        self._waiting.add(waiting)
                        try:
                            taken = await consumer.next_record()
                        finally:
                            self._waiting.discard(waiting)
            except StopAsyncIteration:
                return
            except Exception as exc:  # the share group failed (ShareGroupError)
                self.fail(exc)
                return
            if taken is None:  # stopping
                return
            raw, topic, partition, count = taken
            if self._stop.is_set():  # taken while stopping: give it back
                consumer.settle(topic, partition, raw.offset, proto.RELEASE)
                return
            record = _Record(
                topic, partition, raw.offset, raw.key, raw.value, raw.headers, raw.timestamp, count
            )
            kind = proto.RELEASE  # if cancelled, or stopping on the error
            try:
                skipped = self.counters[record.topic].skipped
                try:
                    delay = await processor.process(record, record.delivery_count)
                except Exception as exc:  # on_failure="stop", or a dead letter failed
                    exc.add_note(
                        f"asyncconsumer: handling {record.topic}[{record.partition}]"
                        f"@{record.offset} (delivery {record.delivery_count}); released"
                    )
                    self.fail(exc)
                    return
                if delay is None:
                    kind = (
                        proto.REJECT
                        if self.counters[record.topic].skipped > skipped
                        else proto.ACCEPT
                    )
                else:
                    # a retry: hold the record (its lock) for the backoff, then
                    # give it back; it comes again with delivery_count + 1
                    await anyio.sleep(delay)
            finally:
                consumer.settle(record.topic, record.partition, record.offset, kind)
