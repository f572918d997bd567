"""Liveness watch: event-loop lag and fetch-loop progress.

The group coordinator's heartbeats and the fetch loop share the event loop
with the handlers. A handler that blocks the loop (CPU work, a blocking call)
delays both, and long enough it gets the member evicted from the group. The
monitor measures how late its own timer fires, and warns with the records that
were running, so the culprit has a name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import anyio

__all__ = ["LivenessMonitor"]

log = logging.getLogger("asyncconsumer")


class LivenessMonitor:
    __slots__ = (
        "_describe_running",
        "interval",
        "last_poll",
        "loop_lag",
        "max_loop_lag",
        "poll_stall_after",
        "warn_lag",
    )

    def __init__(
        self,
        describe_running: Callable[[], Iterable[str]],
        *,
        interval: float = 0.25,
        warn_lag: float = 0.5,
        poll_stall_after: float = 60.0,
    ) -> None:
        self._describe_running = describe_running
        self.interval = interval
        self.warn_lag = warn_lag
        self.poll_stall_after = poll_stall_after
        self.loop_lag = 0.0
        self.max_loop_lag = 0.0
        self.last_poll = time.monotonic()

    def polled(self) -> None:
        """The fetch loop calls this after every poll."""
        self.last_poll = time.monotonic()

    def poll_age(self) -> float:
        return time.monotonic() - self.last_poll

    async def run(self) -> None:
        stalled = False
        while True:
            start = time.monotonic()
            await anyio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - start - self.interval)
            self.loop_lag = lag
            self.max_loop_lag = max(self.max_loop_lag, lag)
            if lag >= self.warn_lag:
                running = ", ".join(self._describe_running()) or "no handler"
                log.warning(
                    "event loop was blocked for %.2fs (running: %s); a blocked loop "
                    "delays heartbeats and fetches: move blocking work to a thread",
                    lag,
                    running,
                )
            age = self.poll_age()
            if age >= self.poll_stall_after and not stalled:
                stalled = True
                log.warning("the fetch loop has not polled for %.1fs", age)
            elif age < self.poll_stall_after:
                stalled = False
