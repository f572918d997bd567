"""Logging as the CLI and :func:`asyncconsumer.run` set it up, and the aiokafka throttle.

A broker that goes away makes aiokafka log the same few errors dozens of times
a second (every reconnect attempt, every fetch retry). :class:`RepeatFilter`
lets each distinct message through at most once per ``interval`` seconds; the
next one that passes says how many were suppressed meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

__all__ = ["FORMAT", "RepeatFilter", "configure_logging", "throttle_aiokafka"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVEL_ENV = "ASYNCCONSUMER_LOG_LEVEL"


class RepeatFilter(logging.Filter):
    """Passes a message (by logger, level and text) at most once per ``interval`` s."""

    def __init__(
        self,
        interval: float = 10.0,
        *,
        max_messages: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.max_messages = max_messages
        self._clock = clock
        self._lock = threading.Lock()  # handlers may log from threads
        # (logger, level, message) -> [when it last passed, repeats suppressed since]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # let logging report the broken record
        key = (record.name, record.levelno, message)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                return False
            if seen is None and len(self._seen) >= self.max_messages:
                self._forget(now)
            suppressed = int(seen[1]) if seen is not None else 0
            since = now - seen[0] if seen is not None else 0.0
            self._seen[key] = [now, 0]
        if suppressed:
            record.msg = f"{message} [repeated {suppressed} more times in {since:.0f}s]"
            record.args = None
        return True

    def _forget(self, now: float) -> None:
        stale = [key for key, (at, _) in self._seen.items() if now - at >= self.interval]
        for key in stale or list(self._seen)[: self.max_messages // 2]:
            del self._seen[key]


_THROTTLE = RepeatFilter()


def throttle_aiokafka(log_filter: logging.Filter = _THROTTLE) -> None:
    """Add ``log_filter`` to every ``aiokafka`` logger (once; a filter on a logger
    sees only what is logged on that logger, so each one needs it)."""
    import aiokafka  # noqa: F401  (its modules create their loggers on import)

    for name in list(logging.root.manager.loggerDict):
        if name == "aiokafka" or name.startswith("aiokafka."):
            logger = logging.getLogger(name)
            if log_filter not in logger.filters:
                logger.addFilter(log_filter)


def configure_logging(level: str | int | None = None) -> None:
    """Log to stderr at ``level`` (default ``$ASYNCCONSUMER_LOG_LEVEL``, else INFO)
    unless the process already configured logging (the root logger has handlers);
    throttle aiokafka's repeated messages either way."""
    if not logging.root.handlers:
        if level is None:
            level = os.environ.get(LEVEL_ENV) or "INFO"
        if isinstance(level, str):
            level = level.upper()
        logging.basicConfig(level=level, format=FORMAT)
    throttle_aiokafka()
