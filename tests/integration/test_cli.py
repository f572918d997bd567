"""The command line in subprocesses: ``asyncconsumer run`` and ``asyncconsumer broker``."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from asyncconsumer import TopicPartition, cli
from asyncconsumer.testing import create_topic
from asyncconsumer.testing._jars import find_tools
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker

from .conftest import aproduce, committed_offsets, end_offsets, unique
from .services import free_port, sample, samples, wait_status

ROOT = Path(__file__).resolve().parents[2]
# The subprocesses import this checkout's package, whatever is installed.
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


async def read_all(stream: anyio.abc.ByteReceiveStream) -> str:
    chunks = [chunk async for chunk in stream]
    return b"".join(chunks).decode()


async def wait_exit(proc: anyio.abc.Process, within: float) -> int:
    with anyio.fail_after(within):
        return await proc.wait()


async def test_run_drains_on_sigterm_and_exits_0_with_offsets_committed(
    kafka_broker: KafkaTestBroker,
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    orders, payments, group = unique("cli-orders"), unique("cli-payments"), unique("g-cli")
    await kafka_broker.create_topic(orders, 2)
    await kafka_broker.create_topic(payments, 1)
    ends: dict[TopicPartition, int] = {}
    for topic, count in ((orders, 300), (payments, 100)):
        records = [(f"c{i % 7}".encode(), b'{"amount": 1.5}') for i in range(count)]
        for tp, offsets in (await aproduce(bootstrap, topic, records)).items():
            ends[tp] = max(offsets) + 1
    env = {
        **ENV,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ASYNCCONSUMER_GROUP_ID": group,
        "EXAMPLE_ORDERS_TOPIC": orders,
        "EXAMPLE_PAYMENTS_TOPIC": payments,
    }
    async with await anyio.open_process(
        [sys.executable, "-m", "asyncconsumer", "run", "examples.orders_app:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        with anyio.fail_after(60):
            # The example commits every second: wait until everything is committed.
            while await committed_offsets(bootstrap, group, ends) != ends:
                assert proc.returncode is None, "the app exited early"
                await anyio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = await wait_exit(proc, 30)
        assert proc.stdout is not None
        output = await read_all(proc.stdout)
    assert code == 0, output
    assert "SIGTERM received: stopping gracefully" in output
    assert "revoked 3 partitions" in output
    assert await committed_offsets(bootstrap, group, ends) == ends


FAILING_APP = """
import argparse
import os
from asyncconsumer import ConsumerApp, Message

app = ConsumerApp(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
                  group_id=os.environ["GROUP"], auto_offset_reset="earliest")

@app.handler(os.environ["TOPIC"])
async def handle(msg: Message[bytes]) -> None:
    raise RuntimeError(f"cannot handle offset {msg.offset}")
"""


async def test_run_exits_1_when_the_app_stops_on_an_error(
    kafka_broker: KafkaTestBroker, tmp_path: Path
) -> None:
    topic = unique("cli-fail")
    await kafka_broker.create_topic(topic, 1)
    await aproduce(kafka_broker.bootstrap_servers, topic, [(None, b"x")])
    (tmp_path / "failing_app.py").write_text(FAILING_APP)
    env = {
        **ENV,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "GROUP": unique("g-cli-fail"),
        "TOPIC": topic,
    }
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-m", "asyncconsumer", "run", "failing_app:app"],
            cwd=tmp_path,
            env=env,
            check=False,
        )
    assert result.returncode == 1
    assert b"RuntimeError('cannot handle offset 0')" in result.stderr


async def test_run_rejects_a_target_that_is_not_an_app() -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "asyncconsumer", "run", "examples:missing"],
        cwd=ROOT,
        env=ENV,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "error: module 'examples' has no attribute 'missing'; it has no ConsumerApp attribute"
    )


async def start_broker_command() -> tuple[anyio.abc.Process, str]:
    """``asyncconsumer broker``: the process and what it printed up to its export line."""
    proc = await anyio.open_process(
        [sys.executable, "-m", "asyncconsumer", "broker"], env=ENV, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    output = ""
    with anyio.fail_after(30):
        while "export " not in output or not output.endswith("\n"):
            output += (await proc.stdout.receive()).decode()
    return proc, output


def exported(output: str) -> dict[str, str]:
    line = next(line for line in output.splitlines() if "export " in line)
    name, _, value = line.split("export ", 1)[1].partition("=")
    return {name: value}


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_broker_command_serves_on_9092_and_prints_a_line_the_cli_honours() -> None:
    """The export line names the variable ``asyncconsumer run`` reads; the broker takes
    9092 when it is free, and says so when it takes another port."""
    procs: list[anyio.abc.Process] = []
    try:
        first_free = port_free(9092)
        proc, output = await start_broker_command()
        procs.append(proc)
        env = exported(output)
        assert list(env) == ["ASYNCCONSUMER_BOOTSTRAP_SERVERS"]
        address = env["ASYNCCONSUMER_BOOTSTRAP_SERVERS"]
        assert f"broker (Tansu, in memory) at {address}" in output
        resolved = cli._resolve(argparse.Namespace(), env)
        assert resolved == {"bootstrap_servers": address}
        await create_topic(address, unique("cli-broker"), 1)  # it is a working broker
        if first_free:
            assert address == "127.0.0.1:9092"
            # 9092 is now taken: the next one says so and takes another port.
            second, output = await start_broker_command()
            procs.append(second)
            assert "port 9092 is in use" in output
            assert exported(output)["ASYNCCONSUMER_BOOTSTRAP_SERVERS"] != address
        else:
            assert "port 9092 is in use" in output
        for p in procs:
            p.send_signal(signal.SIGTERM)
            assert await wait_exit(p, 15) == 0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.aclose()


@pytest.mark.apache_kafka
@pytest.mark.skipif(find_tools() is not None, reason=f"Apache Kafka from Maven: {find_tools()}")
async def test_broker_command_runs_apache_kafka_until_sigint() -> None:
    async with await anyio.open_process(
        [sys.executable, "-m", "asyncconsumer", "broker", "--apache-kafka"],
        env=ENV,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        output = ""
        with anyio.fail_after(120):
            while "stop with Ctrl-C" not in output:
                output += (await proc.stdout.receive()).decode()
        (line,) = [x for x in output.splitlines() if x.startswith("Apache Kafka ")]
        address = line.split(" at ", 1)[1]
        logs = anyio.Path(output.split("logs: ", 1)[1].split(";")[0])
        assert await logs.is_dir()
        topic = unique("cli-apache-kafka")
        await create_topic(address, topic, 1)
        await aproduce(address, topic, [(None, b"x")])  # it is a working broker
        proc.send_signal(signal.SIGINT)
        assert await wait_exit(proc, 30) == 0
    assert not await logs.exists()  # its data went with it


async def test_run_options_and_environment_and_metrics_port(
    kafka_broker: KafkaTestBroker,
) -> None:
    """Settings from ASYNCCONSUMER_* variables and options (options win, both
    override the app's code); probes and metrics on --metrics-port; SIGTERM drains."""
    bootstrap = kafka_broker.bootstrap_servers
    orders, payments, group = unique("cli-m-orders"), unique("cli-m-payments"), unique("g-cli-m")
    await kafka_broker.create_topic(orders, 2)
    await kafka_broker.create_topic(payments, 1)
    ends: dict[TopicPartition, int] = {}
    for topic, count in ((orders, 120), (payments, 30)):
        records = [(f"c{i % 5}".encode(), b'{"amount": 2.0}') for i in range(count)]
        for tp, offsets in (await aproduce(bootstrap, topic, records)).items():
            ends[tp] = max(offsets) + 1
    port = free_port()
    env = {
        **ENV,
        # The example's code would use 127.0.0.1:9092 and this group:
        "ASYNCCONSUMER_BOOTSTRAP_SERVERS": bootstrap,
        "ASYNCCONSUMER_GROUP_ID": "overridden-by-the-option",
        "ASYNCCONSUMER_COMMIT_INTERVAL": "0.2",
        "ASYNCCONSUMER_METRICS_HOST": "127.0.0.1",
        "EXAMPLE_ORDERS_TOPIC": orders,
        "EXAMPLE_PAYMENTS_TOPIC": payments,
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    command = [sys.executable, "-m", "asyncconsumer", "run", "examples.orders_app:app"]
    command += ["--group-id", group, "--metrics-port", str(port)]
    async with (
        await anyio.open_process(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        ready = await wait_status(
            client, "/health/ready", 200, timeout=60, alive=lambda: proc.returncode is None
        )
        assert ready.json()["state"] == "running"
        with anyio.fail_after(60):
            while await committed_offsets(bootstrap, group, ends) != ends:
                assert proc.returncode is None, "the app exited early"
                await anyio.sleep(0.3)
        assert (await client.get("/health/live")).status_code == 200
        metrics = samples((await client.get("/metrics")).text)
        assert sample(metrics, "asyncconsumer_assigned_partitions", group=group) == 3
        for tp, end in ends.items():
            labels = {"group": group, "topic": tp.topic, "partition": str(tp.partition)}
            assert sample(metrics, "asyncconsumer_committed_offset", **labels) == end
            assert sample(metrics, "asyncconsumer_highwater_offset", **labels) == end
            assert sample(metrics, "asyncconsumer_consumer_lag", **labels) == 0
        assert sample(metrics, "asyncconsumer_commit_duration_seconds_count", group=group)
        if kafka_broker.is_apache_kafka:  # ListOffsets agrees (the embedded broker's does not)
            assert await end_offsets(bootstrap, list(ends)) == ends
        for topic, count in ((orders, 120), (payments, 30)):
            by_topic = {"group": group, "topic": topic}
            assert sample(metrics, "asyncconsumer_records_handled_total", **by_topic) == count
            assert sample(metrics, "asyncconsumer_handler_duration_seconds_count", **by_topic) == (
                count
            )
        proc.send_signal(signal.SIGTERM)
        code = await wait_exit(proc, 30)
        assert proc.stdout is not None
        output = await read_all(proc.stdout)
    assert code == 0, output
    assert f"serving /metrics, /health/live and /health/ready on 127.0.0.1:{port}" in output
    assert await committed_offsets(bootstrap, group, ends) == ends
    assert await committed_offsets(bootstrap, "overridden-by-the-option", ends) == dict.fromkeys(
        ends
    )


async def test_run_rejects_an_invalid_environment_value() -> None:
    env = {**ENV, "ASYNCCONSUMER_COMMIT_INTERVAL": "soon"}
    result = await anyio.run_process(
        [sys.executable, "-m", "asyncconsumer", "run", "examples.orders_app:app"],
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert b"ASYNCCONSUMER_COMMIT_INTERVAL" in result.stderr
