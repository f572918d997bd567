"""ApacheKafka (asyncconsumer.testing): real Apache Kafka nodes from Maven Central.

These tests start their own nodes (never the session's), so they need Java and
Maven (or the cached jars), whatever the session's broker is."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata

from asyncconsumer import Consumer, TopicPartition
from asyncconsumer.testing import ApacheKafka, ApacheKafkaUnavailableError
from asyncconsumer.testing._apache import DIR_PREFIX, QUICK_JVM_OPTIONS, _sweep_stale_dirs
from asyncconsumer.testing._jars import find_tools

from .conftest import aproduce, committed_offsets, describe_partitions, unique

_missing = find_tools()
pytestmark = [
    pytest.mark.apache_kafka,
    pytest.mark.skipif(_missing is not None, reason=f"Apache Kafka from Maven: {_missing}"),
    # Up to five node starts and stops in one test, each bounded on its own (the nodes'
    # startup_timeout, stop grace, fail_after): on a 2-core machine shared with other
    # work, they can add up to more than the run-wide 120 s guard against hangs.
    pytest.mark.timeout(300),
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if _alive(pid)]


def _leftover_dirs(pattern: str) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(pattern + "*"))


async def _leader(bootstrap: str, topic: str) -> int:
    (partition,) = await describe_partitions(bootstrap, topic)
    return int(partition["leader"])


async def test_a_node_restart_keeps_data_and_stop_leaves_nothing_behind() -> None:
    topic, group = unique("ak-restart"), unique("g-ak-restart")
    tp = TopicPartition(topic, 0)
    async with ApacheKafka() as kafka:
        assert kafka.start_seconds is not None
        bootstrap = kafka.bootstrap_servers
        proc = kafka._nodes[0].proc
        assert proc is not None
        assert set(QUICK_JVM_OPTIONS) <= set(proc.args)  # type: ignore[arg-type]
        pid, base = proc.pid, kafka._base
        assert base is not None
        assert base.is_dir()
        await kafka.create_topic(topic, partitions=2)
        await aproduce(bootstrap, topic, [(None, f"r{i}".encode()) for i in range(10)], 0)
        client = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await client.start()
        try:
            client.assign([tp])
            await client.commit({tp: OffsetAndMetadata(4, "kept")})
        finally:
            await client.stop()

        await kafka.stop_node(0)
        assert not kafka.running(0)
        assert not _alive(pid)
        await kafka.start_node(0)
        assert kafka.running(0)
        assert kafka.bootstrap_servers == bootstrap  # same port

        client = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await client.start()
        try:
            with anyio.fail_after(30):
                committed = await client._coordinator.fetch_committed_offsets([tp])
                client.assign([tp])
                await client.seek_to_beginning(tp)
                records: list[bytes] = []
                while len(records) < 10:
                    batch = await client.getmany(tp, timeout_ms=500)
                    records.extend(r.value for r in batch.get(tp, []))
        finally:
            await client.stop()
        assert committed[tp] == OffsetAndMetadata(4, "kept")
        assert records == [f"r{i}".encode() for i in range(10)]
        restarted = kafka._nodes[0].proc
        assert restarted is not None
        pids = [pid, restarted.pid]
    assert not any(_alive(p) for p in pids)
    assert not base.exists()


async def test_a_cancelled_start_leaves_no_process_and_no_directory() -> None:
    pattern = f"{DIR_PREFIX}{os.getpid()}-"
    before = _leftover_dirs(pattern)  # the session's broker may be one of ours
    kafka = ApacheKafka()
    started: list[bool] = []

    async def start() -> None:
        await kafka.astart()
        started.append(True)  # too late: the cancellation below missed the start
        await anyio.sleep_forever()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            # Cancel once the node process runs and before it is ready: a fixed delay
            # was either too short (still resolving) or, on a quiet machine, too long.
            with anyio.fail_after(60):
                while not any(node.proc is not None for node in kafka._nodes):
                    await anyio.sleep(0.01)
            scope.cancel()
    assert scope.cancelled_caught
    assert started == []
    assert _leftover_dirs(pattern) == before
    leftover = set(_processes_mentioning(pattern)) - {
        pid for path in before for pid in _processes_mentioning(str(path))
    }
    assert leftover == set()
    with pytest.raises(RuntimeError, match="not running"):
        _ = kafka.bootstrap_servers


SCRIPT = """
import sys, time
from asyncconsumer.testing import ApacheKafka, ApacheKafkaUnavailableError
kafka = ApacheKafka()
kafka.start()
print(kafka._nodes[0].proc.pid, kafka._base, flush=True)
time.sleep(600)
"""


def test_a_killed_python_process_takes_its_node_along() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            node_pid, base = int(line.split()[0]), Path(line.split()[1])
            assert _alive(node_pid)
        finally:
            proc.send_signal(signal.SIGKILL)  # no atexit, no finally: only the death signal
            proc.wait()
        deadline = time.monotonic() + 10
        while _alive(node_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(node_pid)
        assert base.is_dir()  # nobody could remove it ...
        _sweep_stale_dirs()
        assert not base.exists()  # ... until the next start's sweep


def test_a_node_that_cannot_start_raises_with_the_end_of_its_log() -> None:
    pattern = f"{DIR_PREFIX}{os.getpid()}-"
    before = _leftover_dirs(pattern)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            controller = free.getsockname()[1]
        kafka = ApacheKafka(
            properties={
                "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
                "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            }
        )
        with pytest.raises(ApacheKafkaUnavailableError, match="exited with code") as info:
            kafka.start()
    assert "Address already in use" in str(info.value)  # the node's own log, quoted
    assert _leftover_dirs(pattern) == before


FORGETFUL = """
from asyncconsumer.testing import ApacheKafka, ApacheKafkaUnavailableError
kafka = ApacheKafka()
kafka.start()
print(kafka._nodes[0].proc.pid, kafka._base, flush=True)
"""  # and exits without stop()


def test_a_script_that_forgets_to_stop_leaves_nothing_behind() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORGETFUL], capture_output=True, text=True, timeout=100, check=True
    )
    node_pid, base = int(result.stdout.split()[0]), Path(result.stdout.split()[1])
    assert not _alive(node_pid)
    assert not base.exists()  # removed at exit, not just killed


async def test_three_nodes_produce_and_consume_through_a_leader_crash() -> None:
    topic, group = unique("ak-failover"), unique("g-ak-failover")
    async with ApacheKafka(nodes=3) as kafka:
        bootstrap = kafka.bootstrap_servers
        assert len(bootstrap.split(",")) == 3
        await kafka.create_topic(topic, partitions=1)  # replication factor 3, min ISR 2
        await aproduce(bootstrap, topic, [(None, f"a{i}".encode()) for i in range(50)])
        leader = await _leader(bootstrap, topic)
        started = time.monotonic()
        kafka.kill_node(leader - 1)  # node ids are index + 1
        assert not kafka.running(leader - 1)
        # acks=all with min ISR 2: succeeds once a surviving replica leads.
        await aproduce(bootstrap, topic, [(None, f"b{i}".encode()) for i in range(50)])
        failover = time.monotonic() - started
        new_leader = await _leader(bootstrap, topic)
        assert new_leader != leader
        got: list[bytes] = []
        with anyio.fail_after(60):
            async with Consumer(
                topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
            ) as consumer:
                async for msg in consumer:
                    got.append(msg.value)
                    if len(got) == 100:
                        break
        assert got == [f"a{i}".encode() for i in range(50)] + [f"b{i}".encode() for i in range(50)]
        print(f"fail-over: produce resumed {failover:.1f}s after the leader's SIGKILL")


async def test_a_restarted_coordinator_does_not_lose_the_committed_offset() -> None:
    """Right after a restart the group coordinator answers OffsetFetch with a
    request-level COORDINATOR_LOAD_IN_PROGRESS; aiokafka alone reads that as "no
    committed offset" and resets to ``auto_offset_reset`` (asyncconsumer patches it:
    ``_transport/_aiokafka.py``). Several restarts, as the loading window is short."""
    topic, group = unique("ak-load"), unique("g-ak-load")
    tp = TopicPartition(topic, 0)
    async with ApacheKafka() as kafka:
        bootstrap = kafka.bootstrap_servers
        await kafka.create_topic(topic)
        await aproduce(bootstrap, topic, [(None, f"r{i}".encode()) for i in range(10)])
        client = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await client.start()
        try:
            client.assign([tp])
            await client.commit({tp: OffsetAndMetadata(4, "")})
        finally:
            await client.stop()
        for run in range(4):
            await kafka.stop_node(0)
            await kafka.start_node(0)
            with anyio.fail_after(30):
                async with Consumer(
                    partitions=[tp],
                    bootstrap_servers=bootstrap,
                    group_id=group,
                    auto_offset_reset="earliest",
                ) as consumer:
                    first = await anext(consumer)
            # Not 0: the committed offset, then one more per run (leaving commits it).
            assert first.offset == 4 + run
        assert (await committed_offsets(bootstrap, group, [tp]))[tp] == 8
