"""What happens to a record once a lane runs it: the :class:`Processor`.

One processor per handler, shared by its lanes. For a record it decodes, calls
the handler through the middleware chain, publishes the result (``publish_to``),
and decides what a failure means::

    decode ──error──────────────────────────────┐  (a poison pill: no retries)
      │                                          ▼
    middleware → handler → publish ──error──► retry?  yes: the lane waits the backoff
      │                                          │        and calls again
      ▼                                          no
    completed                                    ▼
                                  on_failure: "stop"        raise: the app stops, not committed
                                              "dead_letter" publish to the DLQ, then completed
                                              "skip"        log and count, then completed

The processor never waits for a retry itself: it returns the backoff delay and
the lane decides how to wait (a partition lane sleeps, a pooled lane parks the
record and frees its worker), so that lanes stay the only schedulers.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeAlias

from .._errors import DeadLetterError, DeserializationError, HandlerCancelledError
from .._message import Decoder, Message, Record
from .._producer import SAME_KEY, TRANSACTION, Producer, ProducerRecord, encode, encode_headers
from .._retry import NO_RETRY, FailurePolicy, Retry

if TYPE_CHECKING:
    from ._observe import HandlerTiming

__all__ = [
    "DLQ_HEADERS",
    "Acknowledgement",
    "CallNext",
    "CounterMap",
    "Handler",
    "Middleware",
    "Processor",
    "TopicCounters",
    "abandon",
    "compose",
]

log = logging.getLogger("asyncconsumer")

Acknowledgement: TypeAlias = "asyncio.Future[Any]"
"""What the producer's ``send`` returns: resolved once the broker acknowledged the
record (or with the error that it could not be written)."""

Handler: TypeAlias = Callable[[Any], Awaitable[Any]]
"""A registered handler: it takes a :class:`Message` (or, for batch handlers, a list
of them); what it returns is published with ``publish_to``, else ignored."""

CallNext: TypeAlias = Callable[[Any], Awaitable[Any]]
"""``await call_next(msg)`` runs the rest of the chain (the next middleware, at the
end the handler) and returns what the handler returned."""

Middleware: TypeAlias = Callable[[Any, CallNext], Awaitable[Any]]
"""``async def middleware(msg, call_next)`` (or an object with such a ``__call__``):
wraps every handler attempt. ``msg`` is a :class:`Message` (a list of them for batch
handlers); return what ``call_next`` returned, or something else to publish."""

DLQ_SUFFIX = ".DLQ"
"""A record's default dead-letter topic is its topic's name plus this."""

# Provenance headers on a dead-lettered record (values are UTF-8 text).
DLQ_HEADERS = (
    "dlq.original.topic",
    "dlq.original.partition",
    "dlq.original.offset",
    "dlq.original.timestamp",
    "dlq.group",
    "dlq.handler",
    "dlq.exception.type",
    "dlq.exception.message",
    "dlq.exception.traceback",
    "dlq.attempts",
)
_MESSAGE_LIMIT = 1_000  # characters of the exception message
_TRACEBACK_LIMIT = 8_000  # characters of the traceback (its end: the innermost frames)


@dataclass(slots=True)
class TopicCounters:
    """Running totals for one topic (the engine keeps them across rebalances)."""

    fetched: int = 0
    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0
    transactions: int = 0
    aborted_transactions: int = 0
    # share handlers: acknowledgements, and records delivered more than once
    accepted: int = 0
    released: int = 0
    rejected: int = 0
    redelivered: int = 0


def compose(handler: Handler, middleware: Sequence[Middleware]) -> CallNext:
    """The handler wrapped by ``middleware``, the first one outermost. Built once."""
    call: CallNext = handler
    for layer in reversed(middleware):
        call = _link(layer, call)
    return call


def _link(layer: Middleware, call_next: CallNext) -> CallNext:
    def call(msg: Any) -> Awaitable[Any]:
        return layer(msg, call_next)

    return call


class Processor:
    """Decode, call, publish and apply the failure policy for one handler's records."""

    __slots__ = (
        "backoff_scale",
        "call",
        "counters",
        "dead_letter_topic",
        "decode",
        "group_id",
        "name",
        "observe",
        "on_failure",
        "producer",
        "publish_to",
        "retry",
        "timing",
    )

    def __init__(
        self,
        call: CallNext,
        decode: Decoder | None,
        *,
        name: str = "",
        retry: Retry = NO_RETRY,
        on_failure: FailurePolicy = "stop",
        dead_letter_topic: str | None = None,
        publish_to: str | None = None,
        producer: Producer | None = None,
        group_id: str = "",
        counters: CounterMap | None = None,
        timing: HandlerTiming | None = None,
        backoff_scale: float = 1.0,
    ) -> None:
        if (on_failure == "dead_letter" or publish_to is not None) and producer is None:
            raise ValueError("dead-lettering and publish_to need a producer")
        self.call = call
        self.decode = decode
        self.name = name
        self.retry = retry
        self.on_failure = on_failure
        self.dead_letter_topic = dead_letter_topic
        self.publish_to = publish_to
        self.producer = producer
        self.group_id = group_id
        self.backoff_scale = backoff_scale  # retry delays x this (tests: 0, at once)
        self.counters = counters if counters is not None else CounterMap()
        # The timing's observe(topic, seconds), bound once: it runs per record.
        self.timing = timing
        self.observe = timing.observe if timing is not None else None

    # -- one record ----------------------------------------------------------------

    async def process(
        self, record: Record, attempt: int = 1, sent: list[Acknowledgement] | None = None
    ) -> float | None:
        """Run attempt number ``attempt`` for ``record``.

        Returns ``None`` when the record is done with (handled, dead-lettered or
        skipped: it counts as completed), or the seconds to wait before the next
        attempt. Raises the error to stop on (``on_failure="stop"``).

        With ``sent`` (a partition lane that pipelines ``publish_to``), what the
        record publishes is not awaited: the acknowledgements are appended to
        ``sent`` and the caller completes the record (and counts it handled) once
        they arrive; a failed one goes back through :meth:`failed`.
        """
        decode = self.decode
        if decode is None:
            msg: Message[Any] = record  # no codecs: the raw record is the message
        else:
            try:
                msg = decode(record)
            except DeserializationError as exc:
                await self.undecodable(record, exc)
                return None
        try:
            observe = self.observe
            if observe is None:
                result = await self.call(msg)
            else:  # inline: a coroutine layer per record would cost more than this
                started = perf_counter()
                try:
                    result = await self.call(msg)
                finally:
                    observe(record.topic, perf_counter() - started)
            if (
                result is not None
                and self.publish_to is not None
                and await self._publish(record.key, (result,), sent)
            ):
                return None  # handled once acknowledged
        except (Exception, asyncio.CancelledError) as exc:
            if sent:
                _sent_in_transaction(len(sent))
            abandon(sent)
            return await self.raised(record, exc, attempt)
        self.outcomes(record.topic).handled += 1
        return None

    def outcomes(self, topic: str) -> TopicCounters:
        """Where to count what became of a record of ``topic``: its topic's totals,
        or under ``delivery="exactly_once"`` the open transaction's, counted when it
        commits (an aborted one's records run again)."""
        routed = TRANSACTION.get()
        return self.counters[topic] if routed is None else routed.outcomes

    async def undecodable(self, record: Record, exc: DeserializationError) -> None:
        """``record`` could not be decoded: a poison pill, no retries (``on_failure``
        applies at once; raises to stop)."""
        await self.give_up((record,), exc, attempts=0)

    async def raised(self, record: Record, exc: BaseException, attempt: int) -> float | None:
        """The handler chain raised ``exc`` on attempt number ``attempt`` of
        ``record``: as :meth:`failed`, after telling a stray ``CancelledError`` (a
        failure of the record) from a real cancellation (raised again)."""
        if isinstance(exc, asyncio.CancelledError):
            exc = _stray(exc, record)
        assert isinstance(exc, Exception)
        return await self.failed((record,), exc, attempt)

    # -- a batch ---------------------------------------------------------------------

    async def decode_batch(self, records: list[Record]) -> list[Message[Any]]:
        """Decode a batch once (before its attempts): the records that cannot be
        decoded go their own way (dead letter, skip, or stop) and are left out."""
        decode = self.decode
        if decode is None:
            return records  # no codecs: the raw records are the messages
        try:
            return list(map(decode, records))
        except DeserializationError:
            pass
        msgs = []
        for record in records:
            try:
                msgs.append(decode(record))
            except DeserializationError as exc:
                await self.give_up((record,), exc, attempts=0)
        return msgs

    async def process_batch(
        self,
        records: list[Record],
        msgs: list[Message[Any]],
        attempt: int = 1,
        sent: list[Acknowledgement] | None = None,
    ) -> float | None:
        """Like :meth:`process`, for the decoded ``msgs`` of ``records`` as one call.
        A batch succeeds or fails as a whole."""
        try:
            observe = self.observe
            if observe is None:
                result = await self.call(list(msgs))
            else:
                started = perf_counter()
                try:
                    result = await self.call(list(msgs))
                finally:
                    observe(records[0].topic, perf_counter() - started)
            if result is not None and self.publish_to is not None:
                if not isinstance(result, list | tuple):
                    raise TypeError(
                        f"a publish_to batch handler must return a list of values, not {result!r}"
                    )
                if await self._publish(None, result, sent):
                    return None  # handled once acknowledged
        except (Exception, asyncio.CancelledError) as exc:
            if sent:
                _sent_in_transaction(len(sent))
            abandon(sent)
            if isinstance(exc, asyncio.CancelledError):
                exc = _stray(exc, records[0])
            return await self.failed(self.live(records, msgs), exc, attempt)
        self.outcomes(records[0].topic).handled += len(msgs)
        return None

    @staticmethod
    def live(records: list[Record], msgs: list[Message[Any]]) -> list[Record]:
        """The records of a batch that were decoded (the others went their own way)."""
        if len(msgs) == len(records):
            return records
        decoded = {m.offset for m in msgs}
        return [r for r in records if r.offset in decoded]

    # -- failures --------------------------------------------------------------------

    async def failed(self, records: Sequence[Record], exc: Exception, attempt: int) -> float | None:
        """Attempt number ``attempt`` of ``records`` failed with ``exc``: the seconds
        to wait before the next attempt, or ``None`` once the failure policy is
        applied (dead-lettered or skipped); raises ``exc`` to stop."""
        retry = self.retry
        # exactly_once: what a failed attempt sent is in the open transaction; a
        # retry in place would send it again, and the transaction commit both. The
        # lane aborts the transaction and redoes its records instead (the attempts
        # still counted); a record out of attempts gives up in the next transaction
        # (with on_failure="stop", the stop aborts the transaction anyway).
        allowed = retry.allows(exc, attempt)
        routed = TRANSACTION.get()
        redo = (
            routed is not None
            and (allowed or self.on_failure != "stop")
            and routed.failed_attempt(exc, retry=allowed)
        )
        if allowed:
            delay = retry.backoff.delay(attempt) * self.backoff_scale
            self.counters[records[0].topic].retried += len(records)
            log.warning(
                "%s failed on %s (attempt %d of %d): %r; retrying in %.2fs",
                self.name,
                _where(records),
                attempt,
                retry.attempts,
                exc,
                delay,
            )
            return delay
        if redo:
            return 0.0  # (the lane gives up on the records after the abort)
        await self.give_up(records, exc, attempt)
        return None

    async def give_up(self, records: Sequence[Record], exc: Exception, attempts: int) -> None:
        """Apply ``on_failure`` to records whose last attempt failed (``attempts`` = 0:
        they could not be decoded)."""
        policy = self.on_failure
        if policy == "stop":
            self.counters[records[0].topic].failed += len(records)
            raise exc
        counters = self.outcomes(records[0].topic)
        counters.failed += len(records)
        where = _where(records)
        if policy == "skip":
            counters.skipped += len(records)
            log.error(
                "%s failed on %s after %d attempt(s); skipped (on_failure='skip')",
                self.name,
                where,
                attempts,
                exc_info=exc,
            )
            return
        await self._dead_letter(records, exc, attempts)
        counters.dead_lettered += len(records)
        log.error(
            "%s failed on %s after %d attempt(s); sent to the dead-letter topic",
            self.name,
            where,
            attempts,
            exc_info=exc,
        )

    async def _dead_letter(self, records: Sequence[Record], exc: Exception, attempts: int) -> None:
        assert self.producer is not None
        client = self.producer.client
        text = "".join(traceback.format_exception(exc))[-_TRACEBACK_LIMIT:]
        common = [
            ("dlq.group", self.group_id.encode()),
            ("dlq.handler", self.name.encode()),
            ("dlq.exception.type", _qualified(type(exc)).encode()),
            ("dlq.exception.message", str(exc)[:_MESSAGE_LIMIT].encode()),
            ("dlq.exception.traceback", text.encode()),
            ("dlq.attempts", str(attempts).encode()),
        ]
        topic = ""
        try:
            futures = []
            for record in records:
                topic = self.dead_letter_topic or record.topic + DLQ_SUFFIX
                headers = [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
                headers += [
                    ("dlq.original.topic", record.topic.encode()),
                    ("dlq.original.partition", str(record.partition).encode()),
                    ("dlq.original.offset", str(record.offset).encode()),
                    ("dlq.original.timestamp", str(record.timestamp).encode()),
                ]
                headers += common
                futures.append(await client.send(topic, record.value, record.key, headers=headers))
            for future in futures:
                await future
        except Exception as send_error:
            error = DeadLetterError(
                f"could not publish {_where(records)} to the dead-letter topic {topic!r}: "
                f"{send_error!r}; the record is not committed"
            )
            error.add_note(f"asyncconsumer: the record had failed with {exc!r}")
            raise error from send_error

    async def _publish(
        self, key: bytes | None, results: Iterable[object], sent: list[Acknowledgement] | None
    ) -> bool:
        """Send ``results`` to ``publish_to``. Without ``sent`` wait for their
        acknowledgements; with it, append them there and return whether any was sent."""
        assert self.producer is not None
        assert self.publish_to is not None
        client = self.producer.client
        futures = [] if sent is None else sent
        for result in results:
            if result is None:
                continue
            if isinstance(result, ProducerRecord):
                futures.append(
                    await client.send(
                        result.topic or self.publish_to,
                        encode(result.value),
                        key if result.key is SAME_KEY else encode(result.key),
                        partition=result.partition,
                        headers=encode_headers(result.headers),
                    )
                )
            else:
                futures.append(await client.send(self.publish_to, encode(result), key))
        if sent is None:
            for future in futures:
                await future
            return False
        return bool(sent)


def _sent_in_transaction(count: int) -> None:
    """A failed attempt had published ``count`` results (into the open transaction,
    under ``exactly_once``)."""
    routed = TRANSACTION.get()
    if routed is not None:
        routed.published(count)


def abandon(sent: list[Acknowledgement] | None) -> None:
    """Forget the acknowledgements of a failed attempt (it runs again or gives up):
    their outcome no longer matters, but their errors must not go unretrieved."""
    if sent:
        for future in sent:
            future.add_done_callback(_retrieve)
        sent.clear()


def _retrieve(future: Acknowledgement) -> None:
    if not future.cancelled():
        future.exception()


def _stray(cancelled: asyncio.CancelledError, record: Record) -> Exception:
    """What a ``CancelledError`` out of the handler chain is: a real cancellation of
    this task (a stop's or revoke's deadline, ``abort()``: raised again, the record
    is not completed) or a stray one, which the handler caught from something it
    awaited (a task or future someone else cancelled): a failure of the record.

    anyio and asyncio both cancel a task through ``Task.cancel()``, which counts in
    ``Task.cancelling()`` until the cancellation is absorbed; a stray
    ``CancelledError`` leaves it at zero."""
    task = asyncio.current_task()
    if task is None or task.cancelling():
        raise cancelled
    error = HandlerCancelledError(
        f"the handler raised CancelledError at {record.topic}[{record.partition}]"
        f"@{record.offset}, but nothing cancelled it: it awaited a task or future that "
        "was cancelled elsewhere; treated as a failure of the record"
    )
    error.__cause__ = cancelled
    return error


class CounterMap(dict[str, TopicCounters]):
    """Per-topic counters, created on first use."""

    def __missing__(self, topic: str) -> TopicCounters:
        counters = self[topic] = TopicCounters()
        return counters


def _where(records: Sequence[Record]) -> str:
    first = records[0]
    where = f"{first.topic}[{first.partition}]@{first.offset}"
    if len(records) > 1:
        where += f"..{records[-1].offset} ({len(records)} records)"
    return where


def _qualified(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
