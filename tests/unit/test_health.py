"""Liveness and readiness rules."""

from __future__ import annotations

from asyncconsumer import TopicPartition
from asyncconsumer._health import HealthBounds, evaluate

from .stats import make_statistics

TP = TopicPartition("orders", 0)
BOUNDS = HealthBounds(max_poll_age=10, max_rebalance=30, max_loop_lag=2, max_unreachable=5)


def test_not_ready_before_start_and_while_starting() -> None:
    for state in ("idle", "starting"):
        health = evaluate(state, None, bounds=BOUNDS)
        assert (health.live, health.ready) == (True, False)
        assert health.as_dict()["checks"]["started"] == {"ok": False, "detail": state}


def test_ready_with_partitions_or_after_joining_an_empty_share() -> None:
    assert evaluate("running", make_statistics(assigned=frozenset({TP}), rebalances=1)).ready
    # More members than partitions: this one got none, legitimately.
    assert evaluate("running", make_statistics(rebalances=1)).ready
    # Never assigned yet: the initial join is still going on.
    waiting = evaluate("running", make_statistics(rebalances=0, rebalance_age=2.0))
    assert not waiting.ready
    assert waiting.as_dict()["checks"]["assignment"]["detail"] == "waiting for the first assignment"


def test_each_bound_makes_the_app_unready_but_still_live() -> None:
    ok = {"assigned": frozenset({TP}), "rebalances": 1}
    cases = {
        "fetch_loop": make_statistics(**ok, poll_age=10.5),
        "rebalance": make_statistics(**ok, rebalance_age=31.0),
        "event_loop": make_statistics(**ok, loop_lag=2.5),
        "cluster": make_statistics(**ok, unreachable_for=5.5),
    }
    for check, statistics in cases.items():
        health = evaluate("running", statistics, bounds=BOUNDS)
        assert health.live
        assert not health.ready
        failed = [c.name for c in health.checks if not c.ok]
        assert failed == [check]
    assert evaluate("running", make_statistics(**ok, poll_age=9.9), bounds=BOUNDS).ready


def test_live_fails_only_when_the_app_stopped_on_an_error() -> None:
    stopped = evaluate("stopped", None)
    assert (stopped.live, stopped.ready, stopped.error) == (True, False, None)
    failed = evaluate("failed", None, error=RuntimeError("boom"))
    assert (failed.live, failed.ready) == (False, False)
    assert failed.as_dict()["error"] == "RuntimeError('boom')"


def test_unready_while_the_cluster_is_unreachable_and_ready_again_when_it_answers() -> None:
    ok = {"assigned": frozenset({TP}), "rebalances": 1}
    # The fetch loop keeps polling (empty polls) while no broker answers: that is
    # no sign of health.
    dead = evaluate(
        "running", make_statistics(**ok, poll_age=0.0, unreachable_for=6.0), bounds=BOUNDS
    )
    assert (dead.live, dead.ready) == (True, False)
    assert dead.as_dict()["checks"]["cluster"] == {
        "ok": False,
        "detail": "no answer from the cluster for 6.0s (bound 5s)",
    }
    # A broker answers again (after the member rejoined: a new rebalance completed).
    back = evaluate(
        "running", make_statistics(**{**ok, "rebalances": 2}, unreachable_for=0.2), bounds=BOUNDS
    )
    assert back.ready
    assert back.as_dict()["checks"]["cluster"]["detail"] == "reachable"
