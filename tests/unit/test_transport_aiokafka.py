"""The aiokafka side of the client seam (``_transport/_aiokafka.py``): its work-arounds.

- OffsetFetch request-level errors are raised, not read as "no committed offset"
  (the broker side is in tests/integration/test_apache_kafka.py);
- fetches wait briefly while fetched records are unconsumed (the broker side is in
  tests/integration/test_fetching.py);
- a clean stop whatever the client lets out; the reachability watch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka.errors as kafka_errors
import anyio
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.commit import OffsetFetchResponse_v3
from aiokafka.structs import OffsetAndMetadata

import asyncconsumer
from asyncconsumer import TopicPartition
from asyncconsumer._transport import Reachability, transport_for
from asyncconsumer._transport._aiokafka import (
    HELD_FETCH_WAIT_MS,
    AiokafkaConsumer,
    AiokafkaTransport,
    check_offset_fetch,
    install,
)


class Coordinator:
    dead = False

    def coordinator_dead(self) -> None:
        self.dead = True


def response(error_code: int, topics: list[object] | None = None) -> object:
    return OffsetFetchResponse_v3(throttle_time_ms=0, topics=topics or [], error_code=error_code)


def test_load_in_progress_is_raised_and_retriable() -> None:
    coordinator = Coordinator()
    with pytest.raises(kafka_errors.GroupLoadInProgressError) as info:
        check_offset_fetch(coordinator, response(14))
    assert info.value.retriable  # aiokafka's fetch_committed_offsets loop retries it
    assert not coordinator.dead


def test_not_coordinator_marks_the_coordinator_dead() -> None:
    coordinator = Coordinator()
    with pytest.raises(kafka_errors.NotCoordinatorForGroupError):
        check_offset_fetch(coordinator, response(16))
    assert coordinator.dead


def test_a_good_response_passes() -> None:
    coordinator = Coordinator()
    check_offset_fetch(coordinator, response(0, [("t", [(0, 4, "", 0)])]))
    assert not coordinator.dead


def test_installed_once() -> None:
    patched = GroupCoordinator._send_req
    assert getattr(patched, "_asyncconsumer_patched", False)
    install()
    assert GroupCoordinator._send_req is patched


def test_fetches_wait_briefly_while_fetched_records_are_unconsumed() -> None:
    """The patched fetcher (the attributes it relies on are aiokafka's: this fails if
    an aiokafka release renames them) long-polls only when nothing is left unconsumed;
    the broker-side effect is in tests/integration/test_fetching.py."""

    class NoPartitions:
        tps = ()

    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_max_wait_ms = 500
    fetcher._fetcher_timeout = 0.2
    fetcher._records = {}
    fetcher._get_actions_per_node(NoPartitions())
    assert fetcher._fetch_max_wait_ms == 500
    fetcher._records = {"a partition": "its unconsumed records"}
    fetcher._get_actions_per_node(NoPartitions())
    assert fetcher._fetch_max_wait_ms == HELD_FETCH_WAIT_MS
    fetcher._records = {}
    fetcher._get_actions_per_node(NoPartitions())
    assert fetcher._fetch_max_wait_ms == 500


# -- the transport ---------------------------------------------------------------------


def test_a_broker_address_selects_aiokafka() -> None:
    transport = transport_for("127.0.0.1:9092")
    assert isinstance(transport, AiokafkaTransport)
    assert transport.bootstrap_servers == "127.0.0.1:9092"


async def test_the_consumer_is_aiokafkas_with_auto_commit_off() -> None:
    client = AiokafkaTransport("127.0.0.1:9").consumer(
        group_id="g", auto_offset_reset="earliest", options={"client_id": "x"}
    )
    assert isinstance(client, AIOKafkaConsumer)
    assert client._enable_auto_commit is False
    await client.stop()


def bare_consumer() -> Any:
    """An AiokafkaConsumer with no state of aiokafka's (the test sets what it needs)."""
    client: Any = AiokafkaConsumer.__new__(AiokafkaConsumer)
    client._closed = True  # nothing to close: no warning when it is collected
    return client


# -- stopping ----------------------------------------------------------------------------


class FakeInner:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeFetcher:
    def __init__(self) -> None:
        self._pending_tasks: set[asyncio.Task[None]] = set()


async def failing_stop(self: Any) -> None:
    """Stops like aiokafka 0.14 with the broker down: the fetcher's close awaits a
    task it cancelled, and that CancelledError escapes before the connections close."""
    backoff = asyncio.create_task(asyncio.sleep(10))
    other = asyncio.create_task(asyncio.sleep(10))
    self._fetcher._pending_tasks = {other}
    await asyncio.sleep(0)
    backoff.cancel()
    await backoff


@pytest.fixture
def stopping(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(AIOKafkaConsumer, "stop", failing_stop)
    client: Any = bare_consumer()
    client._client = FakeInner()
    client._fetcher = FakeFetcher()
    return client


async def test_the_clients_own_cancellation_does_not_escape_and_the_close_completes(
    stopping: Any,
) -> None:
    await stopping.stop()
    assert stopping._client.closed
    assert all(task.done() for task in stopping._fetcher._pending_tasks)


async def test_a_real_cancellation_during_the_stop_still_propagates(stopping: Any) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)  # cancelled: the task's cancelling() count is up
        finally:
            with pytest.raises(asyncio.CancelledError):
                await stopping.stop()
    assert scope.cancelled_caught
    assert stopping._client.closed


# -- committing while revoking ----------------------------------------------------------


async def test_a_revoke_commit_survives_a_replaced_pattern_subscription(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuses(self: Any, offsets: Any = None) -> None:
        raise kafka_errors.IllegalStateError("No partitions assigned")

    committed: list[Any] = []

    class Coordinator:
        async def commit_offsets(self, assignment: Any, offsets: Any) -> None:
            committed.append(offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", refuses)
    client: Any = bare_consumer()
    client._coordinator = Coordinator()
    offsets = {TopicPartition("t", 0): OffsetAndMetadata(4, "")}
    with pytest.raises(kafka_errors.IllegalStateError):
        await client.commit(offsets)
    await client.commit(offsets, revoking=True)
    assert committed == [offsets]


# -- reachability ------------------------------------------------------------------------


class FakeConnections:
    def __init__(self) -> None:
        self.answer: anyio.Event | None = None
        self.fail = False

    async def send(self, node_id: int, request: object) -> str:
        if self.answer is not None:
            await self.answer.wait()
        if self.fail:
            raise ConnectionError(f"node {node_id} is not ready")
        return "response"


async def test_reachability_counts_failures_and_silence_not_waiting() -> None:
    client: Any = bare_consumer()
    client._client = connections = FakeConnections()
    reachability = Reachability()
    client.watch(reachability)
    assert await client._client.send(1, "fetch") == "response"
    assert reachability.unreachable_for() < 0.05
    reachability.last_response -= 20  # no answer for 20 s ...
    # ... but a request waits for its answer (a long join): not a failure ...
    connections.answer = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(client._client.send, 1, "join")
        await anyio.sleep(0.01)
        assert reachability.unreachable_for() == 0.0
        connections.answer.set()
    assert reachability.unreachable_for() < 0.05
    # ... while requests that fail leave it unreachable since the last answer ...
    connections.answer, connections.fail = None, True
    reachability.last_response -= 20
    with pytest.raises(ConnectionError):
        await client._client.send(1, "fetch")
    assert reachability.unreachable_for() >= 20
    # ... until one is answered.
    connections.fail = False
    await client._client.send(1, "heartbeat")
    assert reachability.unreachable_for() < 0.05


def test_only_the_transport_imports_aiokafkas_clients() -> None:
    """Outside ``_transport/`` the package uses aiokafka's types and errors at the edge
    (``aiokafka.structs``, ``aiokafka.errors``), its admin client to create topics on a
    real broker (``testing/_broker.py``) and its loggers, never its consumer, producer
    or coordinator."""
    import ast
    from pathlib import Path

    package = Path(asyncconsumer.__file__).parent
    allowed = {"aiokafka.structs", "aiokafka.errors", "aiokafka.admin", "aiokafka"}
    offenders = []
    for path in package.rglob("*.py"):
        if "_transport" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiokafka"):
                if node.module not in allowed or node.module == "aiokafka":
                    offenders.append(f"{path.relative_to(package)}: from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("aiokafka.") and alias.name not in allowed:
                        offenders.append(f"{path.relative_to(package)}: import {alias.name}")
    assert offenders == []
