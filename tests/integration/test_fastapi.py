"""A ConsumerApp in a FastAPI app served by uvicorn on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI, Request

from asyncconsumer import ConsumerApp, Message, TopicPartition
from asyncconsumer.integrations.fastapi import consumer_lifespan, health_router
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import aproduce, committed_offsets, end_offsets, unique, wait_until
from .services import sample, samples, wait_status


@asynccontextmanager
async def serve(api: FastAPI) -> AsyncIterator[str]:
    """Serve ``api`` with uvicorn on a free loopback port; yield its base URL.

    Leaving stops the server the way a signal does (``should_exit``): the
    lifespan's shutdown runs before this returns."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(api, lifespan="on", log_level="warning", ws="none")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(30):
            while not server.started:
                assert not server.should_exit, "the server did not start"
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
    sock.close()


async def test_probes_metrics_and_commit_at_shutdown(kafka_broker: KafkaTestBroker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("fastapi"), unique("g-fastapi")
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
        commit_interval=60.0,  # only the final commit, at shutdown
    )

    @consumer.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        handled.append((msg.tp, msg.offset))

    @consumer.on_revoke
    async def revoked(partitions: list[TopicPartition]) -> None:
        events.append("consumer revoked")

    @asynccontextmanager
    async def resources(api: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("resources opened")
        yield {"pool": "a resource"}
        events.append("resources closed")

    name = f"{handle.__module__}.{handle.__qualname__}"
    api = FastAPI(lifespan=consumer_lifespan(consumer, resources))
    api.include_router(health_router(consumer))

    @api.get("/pool")
    async def pool(request: Request) -> str:
        return str(request.state.pool)  # the composed lifespan's state is passed on

    async with serve(api) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health/live")).status_code == 200
        ready = await wait_status(client, "/health/ready", 200)
        assert ready.json()["state"] == "running"
        assert ready.json()["checks"]["assignment"]["ok"] is True
        await wait_until(lambda: len(handled) == len(records), what="every record handled")
        assert (await client.get("/health/live")).status_code == 200
        metrics = samples((await client.get("/metrics")).text)
        assert sample(metrics, "asyncconsumer_running", group=group) == 1
        assert sample(metrics, "asyncconsumer_assigned_partitions", group=group) == 2
        assert sample(metrics, "asyncconsumer_rebalances_total", group=group) == 1
        assert sample(metrics, "asyncconsumer_rebalance_duration_seconds_count", group=group) == 1
        by_topic = {"group": group, "topic": topic}
        assert sample(metrics, "asyncconsumer_records_fetched_total", **by_topic) == len(records)
        assert sample(metrics, "asyncconsumer_records_handled_total", **by_topic) == len(records)
        assert sample(metrics, "asyncconsumer_records_failed_total", **by_topic) == 0
        assert sample(metrics, "asyncconsumer_handler_duration_seconds_count", **by_topic) == len(
            records
        )
        assert sample(metrics, "asyncconsumer_in_flight_records", group=group, handler=name) == 0
        for tp, end in ends.items():
            labels = {"group": group, "topic": topic, "partition": str(tp.partition)}
            assert sample(metrics, "asyncconsumer_highwater_offset", **labels) == end
            # Nothing committed yet: the lag counts from the processed position.
            assert sample(metrics, "asyncconsumer_consumer_lag", **labels) == 0
            assert sample(metrics, "asyncconsumer_committed_offset", **labels) is None
        assert (await client.get("/pool")).json() == "a resource"
    # The server stopped: the consumer drained, committed and left before the
    # resources of the composed lifespan closed.
    assert events == ["resources opened", "consumer revoked", "resources closed"]
    assert await committed_offsets(bootstrap, group, ends) == ends
    assert sorted(handled) == sorted((tp, o) for tp, end in ends.items() for o in range(end))
    if kafka_broker.is_apache_kafka:  # ListOffsets agrees (the embedded broker's does not)
        assert await end_offsets(bootstrap, list(ends)) == ends


async def test_probes_answer_503_once_the_consumer_stopped_on_an_error(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic, group = unique("fastapi-fail"), unique("g-fastapi-fail")
    await kafka_broker.create_topic(topic, 1)
    await aproduce(bootstrap, topic, [(None, b"ok"), (None, b"ok"), (None, b"bad"), (None, b"ok")])
    consumer = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )

    @consumer.handler(topic)
    async def handle(msg: Message[bytes]) -> None:
        if msg.value == b"bad":
            raise ValueError(f"bad record at {msg.offset}")

    api = FastAPI(lifespan=consumer_lifespan(consumer))
    api.include_router(health_router(consumer, prefix="/ops"))
    async with serve(api) as url, httpx.AsyncClient(base_url=url) as client:
        live = await wait_status(client, "/ops/health/live", 503)
        body = live.json()
        assert body["state"] == "failed"
        assert body["live"] is False
        assert "bad record at 2" in body["error"]
        assert (await client.get("/ops/health/ready")).status_code == 503
        metrics = samples((await client.get("/ops/metrics")).text)
        assert sample(metrics, "asyncconsumer_running", group=group) == 0
        # Two attempts returned, one raised: all three were timed.
        by_topic = {"group": group, "topic": topic}
        assert sample(metrics, "asyncconsumer_handler_duration_seconds_count", **by_topic) == 3
    # The failed record and what follows it are not committed.
    assert await committed_offsets(bootstrap, group, [TopicPartition(topic, 0)]) == {
        TopicPartition(topic, 0): 2
    }
