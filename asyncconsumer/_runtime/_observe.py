"""Runtime events that metrics record as observations rather than read as a snapshot.

Most of what metrics export is read at scrape time from
:meth:`ConsumerApp.statistics`. Durations need every event: the engine reports
each offset commit (``Engine._commit``, the one place commits go through) and
each completed rebalance to its :class:`Observers`, which hand them to whatever
subscribed (``asyncconsumer.metrics``). With nothing subscribed a report costs
one empty loop; there is no report per record.

The one per-record observation is the handler's duration: when a
:class:`HandlerTiming` is set, the processors time each attempt (the middleware
chain and the handler) and hand it the seconds: two clock reads and one call,
not a middleware layer (a coroutine per record). A partition lane, which runs
its records back to back, does less: it reads the clock once per group of up to
64 first attempts (an attempt starts when the one before it ended) and adds the
group to its topic's :meth:`~HandlerTiming.series` itself, with exact buckets
while a group spans less than the lowest bound (see ``_lanes.LaneTiming``).
"""

from __future__ import annotations

import logging
from typing import Protocol

__all__ = ["HandlerTiming", "Observers", "RuntimeObserver"]

log = logging.getLogger("asyncconsumer")


class RuntimeObserver(Protocol):
    """What an observer of the runtime implements."""

    def committed(self, duration: float, error: BaseException | None) -> None:
        """An offset commit finished after ``duration`` seconds (``error``: it failed)."""

    def rebalanced(self, duration: float) -> None:
        """A rebalance completed: ``duration`` seconds from the revoke (or the
        subscription) to the end of the assignment."""


class HandlerTiming(Protocol):
    """What records handler durations (one at most per app): a histogram per topic."""

    bounds: tuple[float, ...]
    """The buckets' upper bounds, ascending."""

    def observe(self, topic: str, seconds: float) -> None:
        """A handler attempt on a record (or a batch) of ``topic`` took ``seconds``."""

    def series(self, topic: str) -> list[float]:
        """``topic``'s histogram, which :meth:`observe` adds to: the count of each
        bucket (at ``bisect_left(bounds, seconds)``; the one after the last bound
        counts the durations above every bound), then the sum of the durations."""


class Observers:
    """The observers of one app; the engine reports to it."""

    __slots__ = ("_items", "timing")

    def __init__(self) -> None:
        self._items: list[RuntimeObserver] = []
        # Read when the app starts: the processors time handlers if it is set.
        self.timing: HandlerTiming | None = None

    def add(self, observer: RuntimeObserver) -> None:
        if observer not in self._items:
            self._items.append(observer)

    def remove(self, observer: RuntimeObserver) -> None:
        if observer in self._items:
            self._items.remove(observer)

    def committed(self, duration: float, error: BaseException | None) -> None:
        for observer in self._items:
            try:
                observer.committed(duration, error)
            except Exception:  # an observer must not break a commit
                log.exception("observer %r failed", observer)

    def rebalanced(self, duration: float) -> None:
        for observer in self._items:
            try:
                observer.rebalanced(duration)
            except Exception:
                log.exception("observer %r failed", observer)
