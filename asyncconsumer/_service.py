"""Running a :class:`~asyncconsumer.ConsumerApp` inside a host (a web framework's lifespan).

The lifecycle (``state``, ``error``, ``health()``) is the app's own; an
:class:`AppService` only adds :meth:`AppService.running`, the background run a
lifespan needs, and keeps the earlier ``service_for(app)`` API working.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskStatus

from ._app import ConsumerApp
from ._health import DEFAULT_BOUNDS, Health, HealthBounds, State
from ._runtime._together import TrackedStatus

__all__ = ["AppService", "service_for"]

log = logging.getLogger("asyncconsumer")


class AppService:
    """Runs one app in a host; its state is the app's (:attr:`ConsumerApp.state`)."""

    def __init__(self, app: ConsumerApp) -> None:
        self.app = app

    @property
    def state(self) -> State:
        return self.app.state

    @property
    def error(self) -> BaseException | None:
        """The error the app last stopped on."""
        return self.app.error

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the app in this task: :meth:`ConsumerApp.run`."""
        await self.app.run(task_status=task_status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AppService]:
        """Start the app in the background; it is subscribed when this enters.

        On exit the app stops gracefully (in-flight records finish, final commit,
        the member leaves the group). An error the app stops on while the host
        keeps running is logged and reported by :meth:`health` (not live); it is
        not raised, so the host shuts down normally. A start-up error is raised.
        Enter and exit in the same task (web frameworks' lifespans do).
        """
        async with anyio.create_task_group() as tg:
            await tg.start(self._run_in_background)
            try:
                yield self
            finally:
                if self.app.running:  # else it stopped on its own (an error)
                    self.app.stop()

    async def _run_in_background(self, *, task_status: TaskStatus[None]) -> None:
        status = TrackedStatus(task_status)
        try:
            await self.app.run(task_status=status)
        except Exception as exc:
            if not status.called:
                raise  # start-up failed: the host's start-up fails with it
            log.error("the consumer app stopped on an error: %r", exc, exc_info=exc)

    def health(self, bounds: HealthBounds = DEFAULT_BOUNDS) -> Health:
        """Liveness and readiness now: :meth:`ConsumerApp.health`."""
        return self.app.health(bounds)


def service_for(app: ConsumerApp) -> AppService:
    """An :class:`AppService` for ``app`` (it holds no state of its own)."""
    return AppService(app)
