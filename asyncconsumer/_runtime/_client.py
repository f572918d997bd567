"""The boundary with aiokafka's client: stopping it cleanly, and whether it reaches the cluster.

Stopping: aiokafka 0.14's fetcher ``close()`` cancels its fetch tasks and awaits
them; a task sleeping in its retry backoff (the broker is down) lets that
``CancelledError`` out of ``AIOKafkaConsumer.stop()``, before the connections are
closed. A ``CancelledError`` out of ``stop()`` while our own task is not being
cancelled (``Task.cancelling() == 0``) is that internal one: :func:`stop_client`
finishes the close and returns.

Reachability: every request of the member (fetch, heartbeat, join, commit,
coordinator and metadata look-ups) goes through ``AIOKafkaClient.send``, which
:class:`Reachability` times. The cluster is *unreachable* when requests fail
(connection refused or closed, node not ready, request timed out) or none is
being sent, and no response has arrived for a while. A request waiting for its
answer (a long join) is not a failure: aiokafka's ``request_timeout_ms`` turns a
hung broker into one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer

__all__ = ["Reachability", "stop_client"]

log = logging.getLogger("asyncconsumer")


async def stop_client(client: AIOKafkaConsumer) -> None:
    """``client.stop()`` (commits nothing, leaves the group), shielded, in any
    state of the cluster; see the module docstring."""
    with anyio.CancelScope(shield=True):
        try:
            await client.stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            ours = task is not None and task.cancelling() > 0
            await _finish_stop(client)
            if ours:
                raise
            log.debug("aiokafka's fetcher let its own cancellation out of stop(); closed")


async def _finish_stop(client: AIOKafkaConsumer) -> None:
    """What ``stop()`` did not get to: the other fetch tasks and the connections."""
    fetcher = getattr(client, "_fetcher", None)
    pending = [task for task in getattr(fetcher, "_pending_tasks", ()) if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    inner = getattr(client, "_client", None)
    if inner is not None:
        try:
            await inner.close()
        except Exception as exc:
            log.warning("closing the Kafka connections failed: %r", exc)


class Reachability:
    """Times the answers to the member's Kafka requests; see the module docstring."""

    __slots__ = ("failing", "in_flight", "last_response")

    def __init__(self) -> None:
        self.last_response = time.monotonic()
        self.failing = False
        self.in_flight = 0

    def watch(self, client: AIOKafkaConsumer) -> None:
        """Time every request ``client`` sends (call before ``client.start()``)."""
        inner = getattr(client, "_client", None)
        send: Callable[..., Awaitable[Any]] | None = getattr(inner, "send", None)
        if send is None:  # another aiokafka: no reachability check, never unready for it
            log.debug("cannot watch aiokafka's requests: reachability is not checked")
            return

        @functools.wraps(send)
        async def timed_send(*args: Any, **kwargs: Any) -> Any:
            self.in_flight += 1
            try:
                response = await send(*args, **kwargs)
            except Exception:
                self.failing = True
                raise
            finally:
                self.in_flight -= 1
            self.last_response = time.monotonic()
            self.failing = False
            return response

        inner.send = timed_send  # type: ignore[union-attr]

    def unreachable_for(self) -> float:
        """Seconds since the last response, unless requests are waiting for their
        answers and none failed since that response (then ``0.0``)."""
        if self.in_flight and not self.failing:
            return 0.0
        return time.monotonic() - self.last_response
