"""Running the parts of an app together: its consumer-group engine and its share
handlers' runtime, in one task group under one lifecycle."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

__all__ = ["Part", "TrackedStatus", "run_together"]

log = logging.getLogger("asyncconsumer")


class Part(Protocol):
    """What an app runs: its consumer-group engine, its share handlers' runtime."""

    async def run(self, *, task_status: TaskStatus[None]) -> None: ...

    def request_stop(self) -> None: ...


async def run_together(parts: Sequence[Part], *, task_status: TaskStatus[None]) -> None:
    """Run ``parts`` in one task group, started once all of them started. When one
    stops (a stop, an error) the others are asked to stop too, gracefully; the first
    error is raised once all of them stopped."""
    if len(parts) == 1:
        await parts[0].run(task_status=task_status)
        return
    failures: list[Exception] = []

    async def run_part(part: Part, *, task_status: TaskStatus[None]) -> None:
        status = TrackedStatus(task_status)
        try:
            await part.run(task_status=status)
        except Exception as exc:
            failures.append(exc)
            if not status.called:
                task_status.started()  # the parent sees the failure and does not start
        finally:
            for other in parts:
                other.request_stop()

    async with anyio.create_task_group() as tg:
        for part in parts:
            if failures:
                break
            await tg.start(run_part, part)
        if not failures:
            task_status.started()
    for other in failures[1:]:
        log.error("another error while stopping on %r", failures[0], exc_info=other)
    if failures:
        raise failures[0]


class TrackedStatus(TaskStatus[None]):
    """Passes ``started()`` on and remembers that it was called."""

    def __init__(self, inner: TaskStatus[None]) -> None:
        self._inner = inner
        self.called = False

    def started(self, value: None = None) -> None:
        self.called = True
        self._inner.started(value)
