"""Helpers for tests that run a ConsumerApp inside a web server or the CLI."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return values.get((name, frozenset(labels.items())))


async def wait_status(
    client: httpx.AsyncClient,
    url: str,
    status: int,
    timeout: float = 30.0,
    alive: Callable[[], bool] = lambda: True,
) -> httpx.Response:
    """GET ``url`` until it answers ``status``; return that response. ``alive``:
    whether the server's process still runs (fail at once when it does not)."""
    deadline = time.monotonic() + timeout
    while True:
        assert alive(), "the server exited"
        try:
            response = await client.get(url)
            if response.status_code == status:
                return response
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer {status} within {timeout}s: {last}")
        await anyio.sleep(0.1)
