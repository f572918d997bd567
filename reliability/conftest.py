"""The three-node cluster (with a proxy in front of it for the members that need one)
and the ``chaos_quick`` marker."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from asyncconsumer.testing import ApacheKafka

from .harness import RESULTS
from .proxy import Proxy

NODES = 3
PROXIED = "PROXIED"  # the listener whose advertised addresses are the proxy's ports


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos_quick: the short subset of the reliability scenarios (make chaos-quick)"
    )


# Every run appends a start line, the scenarios' figures (``record`` in test_scenarios)
# and an end line to .chaos-results.jsonl, all with the run's id, for reliability.figures.
RUN = os.environ.setdefault("RELY_RUN", f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
_started = time.monotonic()


def _append(line: dict[str, object]) -> None:
    with RESULTS.open("a") as out:
        out.write(json.dumps({"run": RUN, **line}) + "\n")


def pytest_sessionstart(session: pytest.Session) -> None:
    options = session.config.option
    _append(
        {
            "event": "start",
            "wall": time.time(),
            "markexpr": options.markexpr or "",
            "keyword": options.keyword or "",
            "args": list(session.config.args),
        }
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _append(
        {
            "event": "end",
            "wall": time.time(),
            "exitstatus": int(exitstatus),
            "tests": session.testscollected,
            "failed": session.testsfailed,
            "duration_s": round(time.monotonic() - _started, 1),
        }
    )


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[ApacheKafka, Proxy]]:
    """Three Apache Kafka nodes (broker + controller each) for a module's scenarios,
    and a proxy with one port per node. Every node has a second listener, advertised
    at its proxy port: a member that bootstraps through ``proxy.bootstrap_servers``
    reaches every node through the proxy only; the others connect directly."""
    proxy = Proxy(NODES).start()
    try:
        with ApacheKafka(nodes=NODES, extra_listeners={PROXIED: proxy.addresses}) as kafka:
            proxy.set_upstreams([kafka.listener_address(PROXIED, i) for i in range(NODES)])
            yield kafka, proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def cluster(network: tuple[ApacheKafka, Proxy]) -> ApacheKafka:
    return network[0]


@pytest.fixture
def proxy(network: tuple[ApacheKafka, Proxy]) -> Iterator[Proxy]:
    """The cluster's proxy, forwarding at the start of each test and again after it."""
    proxy = network[1]
    proxy.heal()
    yield proxy
    proxy.heal()
