"""Plain ``def`` handlers: they run in worker threads, not on the event loop.

A blocking handler on the event loop stalls every partition, the fetch loop and
the group heartbeats. A handler registered as a plain function is called through
:func:`anyio.to_thread.run_sync` instead, with one capacity limiter per app
bounding how many threads run handlers at once. Per partition, records still run
one at a time and in order (the lane awaits the thread); partitions and pooled
workers run in parallel threads up to the limit.

Cancellation (a drain that times out, ``abort()``) cannot interrupt a thread:
the lane waits for the call to return, and its record is not committed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["DEFAULT_MAX_THREADS", "ThreadLimit"]

DEFAULT_MAX_THREADS = 40
"""Threads running ``def`` handlers at once, per app (anyio's default thread pool size)."""


class ThreadLimit:
    """The capacity limiter shared by one app's ``def`` handlers."""

    __slots__ = ("_limiter", "total")

    def __init__(self, total: int = DEFAULT_MAX_THREADS) -> None:
        self.total = total
        self._limiter: anyio.CapacityLimiter | None = None

    def limiter(self) -> anyio.CapacityLimiter:
        # Created on first use, inside the event loop that runs the handlers.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.total)
        return self._limiter

    def wrap(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """An async callable that runs ``fn(arg)`` in a worker thread."""
        run_sync = anyio.to_thread.run_sync
        limiter = self.limiter

        async def in_thread(arg: Any) -> Any:
            return await run_sync(fn, arg, limiter=limiter())

        in_thread.__wrapped__ = fn  # type: ignore[attr-defined]
        return in_thread
