"""The tracing middleware: a consumer span per record, continuing the producer's trace."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asyncconsumer import Message
from asyncconsumer.integrations.opentelemetry import TracingMiddleware

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01".encode()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def middleware(exporter: InMemorySpanExporter) -> TracingMiddleware:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingMiddleware(group_id="billing", tracer_provider=provider)


def message(offset: int, headers: list[tuple[str, bytes]]) -> Message[bytes]:
    return Message("orders", 2, offset, None, b"v", headers, 0)


async def test_the_span_continues_the_trace_from_the_headers(
    middleware: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    seen: list[Any] = []

    async def handler(msg: Any) -> str:
        seen.append(trace.get_current_span().get_span_context())
        return "done"

    msg = message(41, [("traceparent", TRACEPARENT), ("other", b"x")])
    assert await middleware(msg, handler) == "done"
    (span,) = exporter.get_finished_spans()
    assert span.name == "orders process"
    assert span.kind is SpanKind.CONSUMER
    assert span.context is not None
    assert span.parent is not None
    assert span.context.trace_id == TRACE_ID
    assert span.parent.span_id == PARENT_ID
    assert seen[0].span_id == span.context.span_id  # current while the handler runs
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "2",
        "messaging.consumer.group.name": "billing",
        "messaging.kafka.offset": 41,
    }


async def test_without_headers_a_new_trace_starts_and_errors_are_recorded(
    middleware: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    async def handler(msg: Any) -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await middleware(message(1, []), handler)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


async def test_a_batch_has_one_span_linked_to_its_records(
    middleware: TracingMiddleware, exporter: InMemorySpanExporter
) -> None:
    async def handler(msgs: Any) -> int:
        return len(msgs)

    batch = [message(5, [("traceparent", TRACEPARENT)]), message(6, [])]
    assert await middleware(batch, handler) == 2
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert [link.context.trace_id for link in span.links] == [TRACE_ID]
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 2
