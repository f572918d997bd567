"""Health of a running :class:`~asyncconsumer.ConsumerApp`: liveness and readiness.

:func:`evaluate` is a pure function of the app's lifecycle state and its
:class:`~asyncconsumer.Statistics`, so both web integrations and the CLI answer
the same, and tests can check every rule without a broker.

- **live** fails only when the app stopped on an error: restarting the process
  is then the remedy.
- **ready** means the app consumes: it started; it has partitions, or it joined
  the group and was legitimately given none (more members than partitions); the
  fetch loop polled within ``max_poll_age``; a broker answered the member's
  requests within ``max_unreachable`` (see ``Statistics.unreachable_for``: a poll
  that returns nothing because no broker answers is no sign of health); no
  rebalance has lasted beyond ``max_rebalance``; the event-loop lag is below ``max_loop_lag``.

  Share handlers (``Statistics.share``) have two checks of their own, in place of the
  consumer group's in an app without consumer-group handlers: ``share_group``, the
  coordinator accepted each member and answered a heartbeat within
  ``max_unreachable`` (a dead membership, an unreachable coordinator); ``share_fetch``,
  each member's share fetches were answered within ``max_poll_age`` (a stuck fetch
  loop, a share session lost again and again, an unreachable leader).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._statistics import Statistics

__all__ = ["DEFAULT_BOUNDS", "Check", "Health", "HealthBounds", "State", "evaluate"]

State = Literal["idle", "starting", "running", "stopped", "failed"]
"""``idle``: not started; ``starting``: connecting and subscribing; ``running``;
``stopped``: stopped cleanly; ``failed``: stopped on an error."""


@dataclass(frozen=True, slots=True)
class HealthBounds:
    """The limits beyond which the app is not ready (seconds)."""

    max_poll_age: float = 30.0
    """The fetch loop polls at least every 0.5 s, even when every partition is paused."""
    max_rebalance: float = 60.0
    """A rebalance (the initial join included) lasting longer is stuck."""
    max_loop_lag: float = 5.0
    """Event-loop lag beyond this delays heartbeats towards an eviction."""
    max_unreachable: float = 15.0
    """No broker has answered for this long while requests fail (or none is sent):
    the member cannot reach the cluster. Keep it above ``heartbeat_interval_ms``
    (3 s by default: heartbeats are answered at least that often)."""


DEFAULT_BOUNDS = HealthBounds()


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness rule and how it went."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Health:
    """The answer of the health probes."""

    state: State
    live: bool
    ready: bool
    checks: tuple[Check, ...]
    error: str | None = None
    """``repr`` of the error the app stopped on (state ``failed``)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: state, live, ready, error and the checks."""
        return {
            "state": self.state,
            "live": self.live,
            "ready": self.ready,
            "error": self.error,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


def evaluate(
    state: State,
    statistics: Statistics | None,
    *,
    error: BaseException | None = None,
    bounds: HealthBounds = DEFAULT_BOUNDS,
    consumer_group: bool = True,
) -> Health:
    """Liveness and readiness from the lifecycle ``state`` and a statistics snapshot
    (``None`` when the app is not running). ``consumer_group``: whether the app has
    consumer-group handlers (whose checks then apply)."""
    live = state != "failed"
    detail_error = repr(error) if error is not None else None
    started = Check("started", state == "running", state)
    if statistics is None or state != "running":
        return Health(state, live, False, (started,), detail_error)
    s = statistics
    checks = [started]
    if consumer_group:
        checks += _consumer_group_checks(s, bounds)
    if s.share:
        checks += _share_checks(s, bounds)
    checks.append(
        Check(
            "event_loop",
            s.loop_lag <= bounds.max_loop_lag,
            f"lag {s.loop_lag:.3f}s (bound {bounds.max_loop_lag:g}s)",
        )
    )
    return Health(state, live, all(c.ok for c in checks), tuple(checks), detail_error)


def _consumer_group_checks(s: Statistics, bounds: HealthBounds) -> list[Check]:
    assigned = len(s.assigned)
    return [
        Check(
            "assignment",
            assigned > 0 or s.rebalances > 0,
            f"{assigned} partitions"
            if assigned or s.rebalances
            else "waiting for the first assignment",
        ),
        Check(
            "fetch_loop",
            s.poll_age <= bounds.max_poll_age,
            f"last poll {s.poll_age:.1f}s ago (bound {bounds.max_poll_age:g}s)",
        ),
        Check(
            "cluster",
            s.unreachable_for <= bounds.max_unreachable,
            f"no answer from the cluster for {s.unreachable_for:.1f}s "
            f"(bound {bounds.max_unreachable:g}s)"
            if s.unreachable_for > bounds.max_unreachable
            else "reachable",
        ),
        Check(
            "rebalance",
            s.rebalance_age <= bounds.max_rebalance,
            f"in progress for {s.rebalance_age:.1f}s (bound {bounds.max_rebalance:g}s)"
            if s.rebalance_age
            else "none in progress",
        ),
    ]


def _share_checks(s: Statistics, bounds: HealthBounds) -> list[Check]:
    """One check for the share handlers' memberships, one for their fetches; a
    failing one names the handlers at fault."""
    members, fetches = [], []
    for name, m in sorted(s.share.items()):
        if not m.joined:
            members.append(f"{name}: joining share group {m.group} for {m.heartbeat_age:.1f}s")
        elif m.heartbeat_age > bounds.max_unreachable:
            members.append(
                f"{name}: no heartbeat answer from share group {m.group} for "
                f"{m.heartbeat_age:.1f}s (bound {bounds.max_unreachable:g}s)"
            )
        if m.fetch_age > bounds.max_poll_age:
            fetches.append(
                f"{name}: no share fetch answered for {m.fetch_age:.1f}s "
                f"(bound {bounds.max_poll_age:g}s)"
            )
    partitions = sum(len(m.assigned) for m in s.share.values())
    return [
        Check(
            "share_group",
            not members,
            "; ".join(members) or f"{len(s.share)} member(s), {partitions} partitions",
        ),
        Check("share_fetch", not fetches, "; ".join(fetches) or "fetching"),
    ]
