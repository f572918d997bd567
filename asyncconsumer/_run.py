"""``asyncconsumer.run(app)``: the synchronous entry point, with signal handling."""

from __future__ import annotations

import functools
import logging
import signal

import anyio

from ._app import ConsumerApp
from ._logging import configure_logging

__all__ = ["run"]

log = logging.getLogger("asyncconsumer")


def run(
    app: ConsumerApp,
    *,
    handle_signals: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> None:
    """Run ``app`` in a new event loop until it stops.

    SIGINT or SIGTERM asks for a graceful stop (in-flight records get
    ``shutdown_timeout`` to finish, then the final commit); a second signal
    cancels in-flight handlers at once (their records are not committed).
    Raises what the app stopped on.

    Logging is set up as the CLI does (INFO, or ``$ASYNCCONSUMER_LOG_LEVEL``, to
    stderr) unless the process configured it already; aiokafka's repeated
    messages are throttled either way.

    ``metrics_port``: also serve ``GET /metrics`` (Prometheus, needs the
    ``prometheus`` extra), ``/health/live`` and ``/health/ready`` on that port.
    """

    configure_logging()

    async def main() -> None:
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            if handle_signals:
                tg.start_soon(_watch_signals, app)
            if metrics_port is not None:
                from ._http import serve_probes
                from .metrics import CONTENT_TYPE, instrument

                metrics = instrument(app)  # before the app starts: its handler timer
                serve = functools.partial(
                    serve_probes,
                    app,
                    metrics_host,
                    metrics_port,
                    render_metrics=lambda: (metrics.render(), CONTENT_TYPE),
                )
                await tg.start(serve)
            try:
                await app.run()
            except Exception as exc:
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    anyio.run(main)


async def _watch_signals(app: ConsumerApp) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                log.info("%s received: stopping gracefully (again to cancel in-flight work)", name)
                app.stop()
            else:
                log.warning("%s received again: cancelling in-flight handlers", name)
                app.abort()
