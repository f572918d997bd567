"""FastAPI / Starlette: run a ConsumerApp in the web app's lifespan, with probes.

::

    from fastapi import FastAPI
    from asyncconsumer.integrations.fastapi import consumer_lifespan, health_router

    api = FastAPI(lifespan=consumer_lifespan(consumer_app))
    api.include_router(health_router(consumer_app))

The consumer starts when the server starts (the server accepts requests once
the consumer is subscribed; the group join goes on in the background: see
``/health/ready``) and stops gracefully, with its final commit, when the server
shuts down. An error the consumer stops on while the server runs makes
``/health/live`` answer 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from .._app import ConsumerApp
from .._health import DEFAULT_BOUNDS, HealthBounds
from .._service import service_for
from ._common import Probes

__all__ = ["consumer_lifespan", "health_router"]

A = TypeVar("A")

Lifespan = Callable[[A], AbstractAsyncContextManager[Any]]


def consumer_lifespan(
    consumer_app: ConsumerApp, inner: Lifespan[A] | None = None
) -> Callable[[A], AbstractAsyncContextManager[Any]]:
    """A Starlette/FastAPI ``lifespan`` that runs ``consumer_app``.

    ``inner`` is an existing lifespan to compose with: it is entered first and
    exited last, so the resources it opens (database pools, clients) are there
    for the whole time handlers run. What it yields (the lifespan state) is
    passed on.
    """

    @asynccontextmanager
    async def lifespan(asgi_app: A) -> AsyncIterator[Any]:
        if inner is None:
            async with service_for(consumer_app).running():
                yield None
        else:
            async with inner(asgi_app) as state, service_for(consumer_app).running():
                yield state

    return lifespan


def health_router(
    consumer_app: ConsumerApp,
    *,
    prefix: str = "",
    bounds: HealthBounds = DEFAULT_BOUNDS,
    metrics: bool = True,
    include_in_schema: bool = False,
) -> APIRouter:
    """An ``APIRouter`` with ``GET /health/live``, ``/health/ready`` and ``/metrics``.

    The probes answer 200 or 503 with the :class:`~asyncconsumer.integrations.Health`
    as JSON. ``/metrics`` (``metrics=True``, needs ``prometheus_client``) serves the
    app's :func:`~asyncconsumer.metrics.instrument` metrics; build the router
    before the app starts, so that the handler timer is in place.
    """
    probes = Probes(consumer_app, bounds, metrics=metrics)
    router = APIRouter(prefix=prefix, include_in_schema=include_in_schema)

    async def live() -> Response:
        status, body = probes.live()
        return JSONResponse(body, status_code=status)

    async def ready() -> Response:
        status, body = probes.ready()
        return JSONResponse(body, status_code=status)

    router.add_api_route("/health/live", live, methods=["GET"])
    router.add_api_route("/health/ready", ready, methods=["GET"])
    if probes.has_metrics:

        async def metrics_endpoint() -> Response:
            body, content_type = probes.metrics()
            return Response(body, media_type=content_type)

        router.add_api_route("/metrics", metrics_endpoint, methods=["GET"])
    return router
