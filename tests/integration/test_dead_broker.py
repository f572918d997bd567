"""``asyncconsumer run`` when its broker dies: a clean stop, and the probes notice.

Each test starts a broker of its own (the embedded one) and kills it under the app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx

from asyncconsumer import Consumer, TopicPartition
from asyncconsumer.integrations import HealthBounds
from asyncconsumer.testing import EmbeddedBroker

from .conftest import aproduce, unique
from .services import free_port, wait_status

ROOT = Path(__file__).resolve().parents[2]

APP = """
import os
from asyncconsumer import ConsumerApp, Message

app = ConsumerApp(bootstrap_servers=os.environ["BROKER"], group_id=os.environ["GROUP"],
                  auto_offset_reset="earliest")

@app.handler(os.environ["TOPIC"])
async def handle(msg: Message[bytes]) -> None:
    pass
"""


@asynccontextmanager
async def running_app(
    broker: EmbeddedBroker, tmp_path: Path, port: int, topic: str
) -> AsyncIterator[tuple[anyio.abc.Process, httpx.AsyncClient]]:
    """``asyncconsumer run`` of :data:`APP` on ``topic``, with probes on ``port``, ready."""
    await broker.create_topic(topic, 1)
    (tmp_path / "dead_broker_app.py").write_text(APP)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BROKER": broker.bootstrap_servers,
        "GROUP": unique("g-dead"),
        "TOPIC": topic,
    }
    command = [sys.executable, "-m", "asyncconsumer", "run", "dead_broker_app:app"]
    command += ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    async with (
        await anyio.open_process(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as proc,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        try:
            await wait_status(
                client, "/health/ready", 200, timeout=60, alive=lambda: proc.returncode is None
            )
            yield proc, client
        finally:
            if proc.returncode is None:  # the test failed: do not wait for it
                proc.kill()


async def stop_and_read(proc: anyio.abc.Process) -> tuple[int, str]:
    """SIGINT; the exit code and everything the process wrote to stderr."""
    assert proc.stderr is not None
    stderr = proc.stderr
    chunks: list[bytes] = []

    async def drain() -> None:
        async for chunk in stderr:
            chunks.append(chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(40):
            code = await proc.wait()
    return code, b"".join(chunks).decode()


async def test_ctrl_c_while_the_broker_is_down_stops_cleanly(tmp_path: Path) -> None:
    broker = EmbeddedBroker()
    await anyio.to_thread.run_sync(broker.start)
    try:
        app = running_app(broker, tmp_path, free_port(), unique("dead-broker"))
        async with app as (proc, _):
            await anyio.to_thread.run_sync(broker.stop)
            await anyio.sleep(2)  # aiokafka's fetcher is now retrying, with backoff
            code, stderr = await stop_and_read(proc)
    finally:
        await anyio.to_thread.run_sync(broker.stop)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "CancelledError" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if "stopped on an error" in line]
    assert code == 0 or (code == 1 and len(errors) == 1), (code, stderr[-3000:])


async def test_ready_turns_503_when_the_broker_dies_and_200_when_one_answers_again(
    tmp_path: Path,
) -> None:
    """Readiness: 503 within the bound (``max_unreachable``, 15 s) once no broker
    answers, although the fetch loop keeps polling; 200 again when a broker answers
    on the same address (the embedded broker keeps nothing: a new one, the topic
    created again). The log is not flooded meanwhile."""
    bound = HealthBounds().max_unreachable
    broker = EmbeddedBroker()
    await anyio.to_thread.run_sync(broker.start)
    port = broker.port
    try:
        topic = unique("dead-broker")
        async with running_app(broker, tmp_path, free_port(), topic) as (proc, client):
            await anyio.to_thread.run_sync(broker.stop)
            killed = time.monotonic()
            unready = await wait_status(
                client,
                "/health/ready",
                503,
                timeout=bound + 15,
                alive=lambda: proc.returncode is None,
            )
            took = time.monotonic() - killed
            checks = unready.json()["checks"]
            assert not checks["cluster"]["ok"], checks
            assert checks["fetch_loop"]["ok"], checks  # polls go on: not what says it
            assert bound - 1 <= took <= bound + 8, took
            assert (await client.get("/health/live")).status_code == 200
            await anyio.sleep(1)  # the liveness task logs it (every 0.25 s)

            broker = EmbeddedBroker(port=port)
            await anyio.to_thread.run_sync(broker.start)
            await broker.create_topic(topic, 1)
            ready = await wait_status(
                client, "/health/ready", 200, timeout=60, alive=lambda: proc.returncode is None
            )
            assert ready.json()["checks"]["cluster"]["detail"] == "reachable"
            await anyio.sleep(1)
            code, stderr = await stop_and_read(proc)
    finally:
        await anyio.to_thread.run_sync(broker.stop)
    assert code == 0, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if " ERROR aiokafka" in line]
    # Before the throttle: about 70 a second.
    assert len(errors) < 40, "\n".join(errors)
    assert "the cluster is unreachable" in stderr
    assert "the cluster answers again" in stderr


async def test_a_consumer_closes_cleanly_while_the_broker_is_down() -> None:
    broker = EmbeddedBroker()
    await anyio.to_thread.run_sync(broker.start)
    try:
        topic = unique("dead-broker-consumer")
        await broker.create_topic(topic, 1)
        await aproduce(broker.bootstrap_servers, topic, [(None, b"x")])
        with anyio.fail_after(60):
            async with Consumer(
                partitions=[TopicPartition(topic, 0)],
                bootstrap_servers=broker.bootstrap_servers,
                auto_offset_reset="earliest",
            ) as consumer:
                assert (await anext(consumer)).offset == 0
                await anyio.to_thread.run_sync(broker.stop)
                # The loop goes on waiting; aiokafka's fetcher retries, with backoff.
                assert await consumer.getmany(max_wait=2) == []
            # Left without a CancelledError from aiokafka's fetcher.
    finally:
        await anyio.to_thread.run_sync(broker.stop)
