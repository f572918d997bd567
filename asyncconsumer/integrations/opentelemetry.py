"""OpenTelemetry (the ``otel`` extra): one consumer span per record.

::

    from asyncconsumer.integrations.opentelemetry import TracingMiddleware

    app = ConsumerApp(..., middleware=[TracingMiddleware(group_id="orders")])

Each handler attempt runs in a span of kind ``CONSUMER`` named ``"<topic> process"``,
whose parent is the context propagated in the record's headers (W3C
``traceparent`` with the default propagator), so the trace continues from the
producer. While the handler runs its span is the current one (also in ``def``
handlers' threads: anyio copies the context). A handler exception is recorded
on the span, which ends with an error status. A batch gets one span, linked to
the context of each of its records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Tracer, TracerProvider

from .. import __version__

__all__ = ["TracingMiddleware"]

Headers = Sequence[tuple[str, bytes]]


class _HeaderGetter(Getter[Headers]):
    """Reads propagation fields from Kafka headers (a list of ``(str, bytes)``)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [
            value.decode("utf-8", "replace")
            for name, value in carrier or ()
            if name.lower() == key and value is not None
        ]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier or ()]


HEADERS = _HeaderGetter()


class TracingMiddleware:
    """Middleware ``async (msg, call_next)``: a consumer span around each handler attempt.

    ``tracer_provider`` defaults to the global one; ``group_id`` is recorded as
    ``messaging.consumer.group.name``.
    """

    __slots__ = ("_group", "_tracer")

    def __init__(
        self, *, group_id: str | None = None, tracer_provider: TracerProvider | None = None
    ) -> None:
        self._tracer: Tracer = trace.get_tracer("asyncconsumer", __version__, tracer_provider)
        self._group = group_id

    def _attributes(self, topic: str, partition: int) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
        }
        if self._group:
            attributes["messaging.consumer.group.name"] = self._group
        return attributes

    async def __call__(self, msg: Any, call_next: Any) -> Any:
        if isinstance(msg, list):
            return await self._batch(msg, call_next)
        parent: Context = propagate.extract(msg.headers, getter=HEADERS)
        attributes = self._attributes(msg.topic, msg.partition)
        attributes["messaging.kafka.offset"] = msg.offset
        with self._tracer.start_as_current_span(
            f"{msg.topic} process", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ):
            return await call_next(msg)

    async def _batch(self, msgs: list[Any], call_next: Any) -> Any:
        links = []
        for m in msgs:
            context = trace.get_current_span(propagate.extract(m.headers, getter=HEADERS))
            span_context = context.get_span_context()
            if span_context.is_valid:
                links.append(Link(span_context, {"messaging.kafka.offset": m.offset}))
        first = msgs[0]
        attributes = self._attributes(first.topic, first.partition)
        attributes["messaging.batch.message_count"] = len(msgs)
        with self._tracer.start_as_current_span(
            f"{first.topic} process", kind=SpanKind.CONSUMER, attributes=attributes, links=links
        ):
            return await call_next(msgs)
