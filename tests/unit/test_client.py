"""The aiokafka client boundary: a clean stop whatever the client lets out."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from asyncconsumer._runtime._client import Reachability, stop_client


class FakeInner:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeFetcher:
    def __init__(self) -> None:
        self._pending_tasks: set[asyncio.Task[None]] = set()


class FakeClient:
    """Stops like aiokafka 0.14 with the broker down: the fetcher's close awaits a
    task it cancelled, and that CancelledError escapes before the connections close."""

    def __init__(self) -> None:
        self._client = FakeInner()
        self._fetcher = FakeFetcher()

    async def stop(self) -> None:
        backoff = asyncio.create_task(asyncio.sleep(10))
        other = asyncio.create_task(asyncio.sleep(10))
        self._fetcher._pending_tasks = {other}
        await asyncio.sleep(0)
        backoff.cancel()
        await backoff


async def test_the_clients_own_cancellation_does_not_escape_and_the_close_completes() -> None:
    client: Any = FakeClient()
    await stop_client(client)
    assert client._client.closed
    assert all(task.done() for task in client._fetcher._pending_tasks)


async def test_a_real_cancellation_during_the_stop_still_propagates() -> None:
    client: Any = FakeClient()
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)  # cancelled: the task's cancelling() count is up
        finally:
            with pytest.raises(asyncio.CancelledError):
                await stop_client(client)
    assert scope.cancelled_caught
    assert client._client.closed


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
    client: Any = FakeClient()
    client._client = connections = FakeConnections()
    reachability = Reachability()
    reachability.watch(client)
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
