"""Liveness watch: event-loop lag and fetch-loop progress.

The group coordinator's heartbeats and the fetch loop share the event loop
with the handlers. A handler that blocks the loop (CPU work, a blocking call)
delays both, and long enough it gets the member evicted from the group. The
monitor measures how late its own timer fires, and warns with the records that
were running, so the culprit has a name.

The name is taken while the loop is blocked: a watchdog thread sees the
monitor's timer overdue and notes what is running at that moment (a handler
that blocks and returns between two of the monitor's checks would otherwise be
gone when the loop can look). The thread only reads, and only while the loop
it reads from is stuck.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable

import anyio

__all__ = ["LivenessMonitor"]

log = logging.getLogger("asyncconsumer")


class LivenessMonitor:
    __slots__ = (
        "_beat",
        "_culprit",
        "_sources",
        "interval",
        "last_poll",
        "loop_lag",
        "max_loop_lag",
        "poll_stall_after",
        "unreachable_after",
        "unreachable_for",
        "warn_lag",
    )

    def __init__(
        self,
        describe_running: Callable[[], Iterable[str]],
        *,
        interval: float = 0.25,
        warn_lag: float = 0.5,
        poll_stall_after: float = 60.0,
        unreachable_for: Callable[[], float] = lambda: 0.0,
        unreachable_after: float = 15.0,
    ) -> None:
        self._sources = [describe_running]
        self.unreachable_for = unreachable_for
        self.unreachable_after = unreachable_after
        self.interval = interval
        self.warn_lag = warn_lag
        self.poll_stall_after = poll_stall_after
        self.loop_lag = 0.0
        self.max_loop_lag = 0.0
        self.last_poll = time.monotonic()
        self._beat = self.last_poll  # when the monitor's current sleep began
        self._culprit: str | None = None  # what ran while the loop was blocked

    def add_source(self, describe_running: Callable[[], Iterable[str]]) -> None:
        """Also name what ``describe_running`` says runs when the loop is blocked
        (the share handlers of an app with consumer-group handlers too)."""
        self._sources.append(describe_running)

    def _describe_running(self) -> list[str]:
        return [what for describe in self._sources for what in describe()]

    def polled(self) -> None:
        """The fetch loop calls this after every poll."""
        self.last_poll = time.monotonic()

    def poll_age(self) -> float:
        return time.monotonic() - self.last_poll

    async def run(self) -> None:
        stop = threading.Event()
        watchdog = threading.Thread(
            target=self._watch, args=(stop,), name="asyncconsumer liveness", daemon=True
        )
        watchdog.start()
        try:
            await self._run()
        finally:
            stop.set()

    def _watch(self, stop: threading.Event) -> None:
        """In a thread: note what runs once the monitor's timer is overdue by half
        the warning threshold (so by the time the loop measures a lag of the
        threshold, the note was taken during the block)."""
        overdue = self.interval + self.warn_lag / 2
        while not stop.wait(self.warn_lag / 4):
            if self._culprit is None and time.monotonic() - self._beat >= overdue:
                # If the loop moved on meanwhile, it looks itself.
                with contextlib.suppress(Exception):
                    self._culprit = ", ".join(self._describe_running())

    async def _run(self) -> None:
        stalled = unreachable = False
        while True:
            start = self._beat = time.monotonic()
            await anyio.sleep(self.interval)
            lag = max(0.0, time.monotonic() - start - self.interval)
            self.loop_lag = lag
            self.max_loop_lag = max(self.max_loop_lag, lag)
            culprit, self._culprit = self._culprit, None
            if lag >= self.warn_lag:
                running = culprit or ", ".join(self._describe_running()) or "no handler"
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
            silence = self.unreachable_for()
            if silence >= self.unreachable_after and not unreachable:
                unreachable = True
                log.warning(
                    "no broker has answered for %.1fs: the cluster is unreachable "
                    "(not ready until it answers again)",
                    silence,
                )
            elif unreachable and silence < self.unreachable_after:
                unreachable = False
                log.info("the cluster answers again")
