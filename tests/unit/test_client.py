"""The aiokafka client boundary: a clean stop whatever the client lets out."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from asyncconsumer._runtime._client import stop_client


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
