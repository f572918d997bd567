"""aiohttp: run a ConsumerApp with the web application, with probes.

::

    from aiohttp import web
    from asyncconsumer.integrations.aiohttp import setup

    web_app = web.Application()
    setup(web_app, consumer_app)      # cleanup_ctx + /health/live, /health/ready, /metrics
    web.run_app(web_app)

The consumer starts with the application (``cleanup_ctx``) and stops gracefully,
with its final commit, at cleanup. An error the consumer stops on while the
server runs makes ``/health/live`` answer 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .._app import ConsumerApp
from .._health import DEFAULT_BOUNDS, HealthBounds
from .._service import service_for
from ._common import Probes

__all__ = ["consumer_context", "health_routes", "setup"]


def consumer_context(
    consumer_app: ConsumerApp,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry: ``web_app.cleanup_ctx.append(consumer_context(app))``.

    Other contexts appended before it (database pools, ...) start before the
    consumer and are cleaned up after it stopped.
    """

    async def context(web_app: web.Application) -> AsyncIterator[None]:
        async with service_for(consumer_app).running():
            yield

    return context


def health_routes(
    consumer_app: ConsumerApp,
    *,
    prefix: str = "",
    bounds: HealthBounds = DEFAULT_BOUNDS,
    metrics: bool = True,
) -> list[web.RouteDef]:
    """``GET {prefix}/health/live``, ``/health/ready`` (200 or 503, JSON) and
    ``/metrics`` (``metrics=True``, needs ``prometheus_client``)."""
    probes = Probes(consumer_app, bounds, metrics=metrics)

    async def live(request: web.Request) -> web.Response:
        status, body = probes.live()
        return web.json_response(body, status=status)

    async def ready(request: web.Request) -> web.Response:
        status, body = probes.ready()
        return web.json_response(body, status=status)

    routes = [
        web.get(f"{prefix}/health/live", live),
        web.get(f"{prefix}/health/ready", ready),
    ]
    if probes.has_metrics:

        async def metrics_endpoint(request: web.Request) -> web.Response:
            body, content_type = probes.metrics()
            response = web.Response(body=body)
            response.headers["Content-Type"] = content_type
            return response

        routes.append(web.get(f"{prefix}/metrics", metrics_endpoint))
    return routes


def setup(
    web_app: web.Application,
    consumer_app: ConsumerApp,
    *,
    prefix: str = "",
    bounds: HealthBounds = DEFAULT_BOUNDS,
    metrics: bool = True,
) -> None:
    """Run ``consumer_app`` with ``web_app`` and add the probe routes."""
    web_app.cleanup_ctx.append(consumer_context(consumer_app))
    web_app.add_routes(health_routes(consumer_app, prefix=prefix, bounds=bounds, metrics=metrics))
