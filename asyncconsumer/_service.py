"""Running a :class:`~asyncconsumer.ConsumerApp` inside a service, with its state.

A web framework's lifespan (FastAPI/Starlette, aiohttp) or the CLI runs the app
through its :class:`AppService`, which remembers whether the app is starting,
running, stopped, or stopped on an error: what the health probes answer from.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
from anyio.abc import TaskStatus

from ._app import ConsumerApp, TrackedStatus
from ._errors import ConsumerStoppedError
from ._health import DEFAULT_BOUNDS, Health, HealthBounds, State, evaluate

__all__ = ["AppService", "service_for"]

log = logging.getLogger("asyncconsumer")


class AppService:
    """Runs one app and tracks its lifecycle; see :func:`service_for`."""

    def __init__(self, app: ConsumerApp) -> None:
        self.app = app
        self.state: State = "idle"
        self.error: BaseException | None = None
        """The error the app last stopped on."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the app in this task (like :meth:`ConsumerApp.run`), tracking its state."""
        self.state, self.error = "starting", None
        started = _Started(task_status, self)
        try:
            await self.app.run(task_status=started)
        except BaseException as exc:
            self.state = "failed" if isinstance(exc, Exception) else "stopped"
            if isinstance(exc, Exception):
                self.error = exc
            raise
        self.state = "stopped"

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
            await self.run(task_status=status)
        except Exception as exc:
            if not status.called:
                raise  # start-up failed: the host's start-up fails with it
            log.error("the consumer app stopped on an error: %r", exc, exc_info=exc)

    def health(self, bounds: HealthBounds = DEFAULT_BOUNDS) -> Health:
        """Liveness and readiness now."""
        statistics = None
        if self.state == "running":
            with suppress(ConsumerStoppedError):
                statistics = self.app.statistics()
        return evaluate(self.state, statistics, error=self.error, bounds=bounds)


class _Started(TaskStatus[None]):
    """Marks the service running when the app reports it started."""

    def __init__(self, inner: TaskStatus[None], service: AppService) -> None:
        self._inner = inner
        self._service = service

    def started(self, value: None = None) -> None:
        self._service.state = "running"
        self._inner.started(value)


_services: weakref.WeakKeyDictionary[ConsumerApp, AppService] = weakref.WeakKeyDictionary()


def service_for(app: ConsumerApp) -> AppService:
    """The one :class:`AppService` of ``app`` (created on first use)."""
    service = _services.get(app)
    if service is None:
        service = _services[app] = AppService(app)
    return service
