"""The CLI's probe endpoint (``--metrics-port``), without a broker."""

from __future__ import annotations

import functools

import anyio
import httpx

from asyncconsumer import ConsumerApp
from asyncconsumer._http import serve_probes


async def test_probes_metrics_and_errors() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")
    renders: list[int] = []

    def render() -> tuple[bytes, str]:
        renders.append(1)
        if len(renders) > 1:
            raise RuntimeError("collector broke")
        return b"asyncconsumer_running 0\n", "text/plain; version=0.0.4"

    async with anyio.create_task_group() as tg:
        serve = functools.partial(serve_probes, app, "127.0.0.1", 0, render_metrics=render)
        port = await tg.start(serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert ready.json()["state"] == "idle"
            assert (await client.get("/health/live")).status_code == 200
            metrics = await client.get("/metrics?x=1")
            assert metrics.text == "asyncconsumer_running 0\n"
            assert metrics.headers["content-type"] == "text/plain; version=0.0.4"
            assert (await client.get("/metrics")).status_code == 500  # and it keeps serving
            assert (await client.get("/elsewhere")).status_code == 404
            assert (await client.post("/health/live")).status_code == 405
            app._state, app._error = "failed", ValueError("x")  # as a failed run leaves it
            assert (await client.get("/health/live")).status_code == 503
        tg.cancel_scope.cancel()
