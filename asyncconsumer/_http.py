"""A minimal HTTP endpoint for ``asyncconsumer run --metrics-port``.

It serves ``GET /metrics`` (Prometheus), ``/health/live`` and ``/health/ready``
from the app's own event loop, so a scrape reads the runtime's state between
two steps of it, never concurrently with them. One request per connection,
nothing else of HTTP: web services embed the app in their framework instead
(``asyncconsumer.integrations``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from ._app import ConsumerApp
from ._health import DEFAULT_BOUNDS, HealthBounds

__all__ = ["serve_probes"]

log = logging.getLogger("asyncconsumer")

_MAX_REQUEST = 8192
_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Response = tuple[int, str, bytes]


async def serve_probes(
    app: ConsumerApp,
    host: str,
    port: int,
    *,
    render_metrics: Callable[[], tuple[bytes, str]],
    bounds: HealthBounds = DEFAULT_BOUNDS,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started(port)`` once listening."""

    def respond(method: str, path: str) -> Response:
        path = path.split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            body, content_type = render_metrics()
            return 200, content_type, body
        if path in ("/health/live", "/health/ready"):
            health = app.health(bounds)
            ok = health.live if path.endswith("live") else health.ready
            return 200 if ok else 503, "application/json", json.dumps(health.as_dict()).encode()
        return 404, "text/plain", b"not found\n"

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    request = b""
                    while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                        request += await stream.receive()
                    method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split()
                    try:
                        status, content_type, body = respond(method, path)
                    except Exception:  # never let a probe take the app down
                        log.exception("answering %s %s failed", method, path)
                        status, content_type, body = 500, "text/plain", b"internal error\n"
                    head = (
                        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                        f"Content-Type: {content_type}\r\n"
                        f"Content-Length: {len(body)}\r\n"
                        "Connection: close\r\n\r\n"
                    )
                    await stream.send(head.encode("latin-1") + body)
            except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError, ValueError):
                pass  # the client went away or sent no HTTP request line

    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound: int = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("serving /metrics, /health/live and /health/ready on %s:%d", host, bound)
        task_status.started(bound)
        await listener.serve(handle)
