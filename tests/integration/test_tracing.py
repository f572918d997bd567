"""The tracing middleware in a running app: spans continue the producer's trace."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.integrations.opentelemetry import TracingMiddleware
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import unique, wait_until

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


async def test_one_consumer_span_per_record_under_the_producers_trace(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("traced"), unique("g-traced")
    await kafka_broker.create_topic(topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(3):
            traceparent = f"00-{TRACE_ID:032x}-{i + 1:016x}-01".encode()
            await producer.send_and_wait(topic, b"v", headers=[("traceparent", traceparent)])
        await producer.send_and_wait(topic, b"untraced")
    finally:
        await producer.stop()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        middleware=[TracingMiddleware(group_id=group, tracer_provider=provider)],
    )
    handled: list[int] = []

    @app.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append(msg.offset)

    async with app:
        await wait_until(lambda: len(handled) == 4, what="four records handled")
    offsets = {
        span: dict(span.attributes or {})["messaging.kafka.offset"]
        for span in exporter.get_finished_spans()
    }
    spans = sorted(offsets, key=lambda span: int(str(offsets[span])))
    assert [offsets[span] for span in spans] == [0, 1, 2, 3]
    for i, span in enumerate(spans[:3]):
        assert span.parent is not None
        assert (span.parent.trace_id, span.parent.span_id) == (TRACE_ID, i + 1)
    assert spans[3].parent is None
    assert {dict(s.attributes or {})["messaging.consumer.group.name"] for s in spans} == {group}
