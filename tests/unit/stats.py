"""A :class:`Statistics` for unit tests, with every field defaulted."""

from __future__ import annotations

from typing import Any

from asyncconsumer import Statistics

DEFAULTS: dict[str, Any] = {
    "assigned": frozenset(),
    "in_flight": 0,
    "buffered": 0,
    "paused": frozenset(),
    "completed": {},
    "committed": {},
    "highwater": {},
    "rebalances": 0,
    "rebalance_age": 0.0,
    "poll_age": 0.1,
    "loop_lag": 0.0,
    "max_loop_lag": 0.0,
    "handlers": {},
    "topics": {},
    "unreachable_for": 0.0,
    "share": {},
}


def make_statistics(**values: Any) -> Statistics:
    fields: dict[str, Any] = {name: values.get(name, DEFAULTS[name]) for name in Statistics._fields}
    return Statistics(**fields)
