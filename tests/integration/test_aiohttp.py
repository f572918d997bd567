"""A ConsumerApp in an aiohttp application, served on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.integrations.aiohttp import consumer_context, health_routes, setup
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import aproduce, committed_offsets, end_offsets, unique, wait_until
from .services import sample, samples, wait_status


@asynccontextmanager
async def serve(web_app: web.Application) -> AsyncIterator[str]:
    """Serve ``web_app`` on a free loopback port; leaving runs its cleanup."""
    runner = web.AppRunner(web_app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_probes_metrics_and_commit_at_cleanup(kafka_broker: KafkaTestBroker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("aiohttp"), unique("g-aiohttp")
    await kafka_broker.create_topic(topic, 2)
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(40)]
    produced = await aproduce(bootstrap, topic, records)
    ends = {tp: max(offsets) + 1 for tp, offsets in produced.items()}
    events: list[str] = []
    handled: list[tuple[TopicPartition, int]] = []
    consumer = ConsumerApp(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        commit_interval=60.0,  # only the final commit, at cleanup
    )

    @consumer.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append((msg.tp, msg.offset))

    @consumer.on_revoke
    async def revoked(partitions: list[TopicPartition]) -> None:
        events.append("consumer revoked")

    async def resources(web_app: web.Application) -> AsyncIterator[None]:
        events.append("resources opened")
        yield
        events.append("resources closed")

    web_app = web.Application()
    web_app.cleanup_ctx.append(resources)  # before the consumer: outlives it
    setup(web_app, consumer)

    async with serve(web_app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health/live")).status_code == 200
        ready = await wait_status(client, "/health/ready", 200)
        assert ready.json()["checks"]["assignment"]["ok"] is True
        await wait_until(lambda: len(handled) == len(records), what="every record handled")
        response = await client.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        metrics = samples(response.text)
        assert sample(metrics, "asyncconsumer_running", group=group) == 1
        assert sample(metrics, "asyncconsumer_assigned_partitions", group=group) == 2
        by_topic = {"group": group, "topic": topic}
        assert sample(metrics, "asyncconsumer_records_handled_total", **by_topic) == len(records)
        assert sample(metrics, "asyncconsumer_handler_duration_seconds_count", **by_topic) == len(
            records
        )
        for tp, end in ends.items():
            labels = {"group": group, "topic": topic, "partition": str(tp.partition)}
            assert sample(metrics, "asyncconsumer_highwater_offset", **labels) == end
            assert sample(metrics, "asyncconsumer_consumer_lag", **labels) == 0
    assert events == ["resources opened", "consumer revoked", "resources closed"]
    assert await committed_offsets(bootstrap, group, ends) == ends
    assert sorted(handled) == sorted((tp, o) for tp, end in ends.items() for o in range(end))
    if kafka_broker.is_apache_kafka:  # ListOffsets agrees (the embedded broker's does not)
        assert await end_offsets(bootstrap, list(ends)) == ends


async def test_probes_answer_503_once_the_consumer_stopped_on_an_error(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("aiohttp-fail"), unique("g-aiohttp-fail")
    await kafka_broker.create_topic(topic, 1)
    await aproduce(bootstrap, topic, [(None, b"ok"), (None, b"bad"), (None, b"ok")])
    consumer = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )

    @consumer.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.value == b"bad":
            raise ValueError(f"bad record at {msg.offset}")

    web_app = web.Application()
    web_app.cleanup_ctx.append(consumer_context(consumer))
    web_app.add_routes(health_routes(consumer, prefix="/ops", metrics=False))
    async with serve(web_app) as url, httpx.AsyncClient(base_url=url) as client:
        live = await wait_status(client, "/ops/health/live", 503)
        assert live.json()["state"] == "failed"
        assert "bad record at 1" in live.json()["error"]
        assert (await client.get("/ops/health/ready")).status_code == 503
        assert (await client.get("/ops/metrics")).status_code == 404  # metrics=False
    assert await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)]) == {
        TopicPartition(topic, 0): 1
    }
