"""The Grafana dashboard queries only metrics the exporter has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncconsumer import ConsumerApp, HandlerStatistics, Message, TopicPartition, TopicStatistics
from asyncconsumer.metrics import ConsumerMetrics

from .stats import make_statistics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "asyncconsumer.json"


def queried_names(dashboard: dict[str, Any]) -> set[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return {name for expr in exprs for name in re.findall(r"\basyncconsumer_[a-z_]+", expr)}


async def exported_names(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every sample name of a scrape in which every metric has a value."""
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")
    metrics = ConsumerMetrics(app)
    tp = TopicPartition("orders", 0)
    statistics = make_statistics(
        assigned=frozenset({tp}),
        completed={tp: 5},
        committed={tp: 5},
        highwater={tp: 9},
        handlers={"svc.handle": HandlerStatistics(partitions=1, in_flight=1, buffered=2)},
        topics={"orders": TopicStatistics(1, 1, 1, 1, 1, 1)},
    )
    monkeypatch.setattr(app, "statistics", lambda: statistics)
    app._observers.committed(0.01, None)
    app._observers.rebalanced(1.0)

    async def call_next(msg: Any) -> None:
        return None

    await metrics.timer(Message("orders", 0, 1, None, b"", [], 0), call_next)
    text = metrics.render().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


async def test_every_queried_metric_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = queried_names(dashboard)
    exported = await exported_names(monkeypatch)
    assert queried - exported == set()
    # What the dashboard is for: throughput, lag, handler and commit latency, failures,
    # rebalances, event-loop lag, dead letters.
    for name in (
        "asyncconsumer_records_handled_total",
        "asyncconsumer_consumer_lag",
        "asyncconsumer_handler_duration_seconds_bucket",
        "asyncconsumer_commit_duration_seconds_bucket",
        "asyncconsumer_commit_failures_total",
        "asyncconsumer_records_failed_total",
        "asyncconsumer_rebalances_total",
        "asyncconsumer_event_loop_lag_seconds",
        "asyncconsumer_records_dead_lettered_total",
    ):
        assert name in queried


def test_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
