"""Retry policies: :class:`Retry` (how many attempts, for which errors) and
:class:`Backoff` (how long to wait before the next attempt)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from ._errors import ConfigurationError

__all__ = ["Backoff", "Delivery", "FailurePolicy", "Retry"]

FailurePolicy = Literal["stop", "dead_letter", "skip"]
"""What happens to a record whose last attempt failed (or that cannot be decoded):

- ``"stop"`` (default): the app stops without committing it; ``run()`` raises;
- ``"dead_letter"``: it is published to the dead-letter topic, then counts as completed;
- ``"skip"``: it is logged and counted, then counts as completed.
"""

Delivery = Literal["at_least_once", "at_most_once", "exactly_once"]
"""``"at_least_once"`` (default): a record's offset is committed after its handler
completed. ``"at_most_once"``: records' offsets are committed before their handler
starts; a crash loses the records that were running or fetched. ``"exactly_once"``:
what the handler produces (``publish_to``, dead letters, sends through the app's
producer) and the partition's offset are committed in one Kafka transaction, so a
``read_committed`` reader sees each output once (Apache Kafka; ``ordering="partition"``
or batch handlers)."""

FAILURE_POLICIES = ("stop", "dead_letter", "skip")
DELIVERIES = ("at_least_once", "at_most_once", "exactly_once")


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait before the next attempt: ``initial * multiplier ** (n - 1)`` after
    the ``n``-th failed attempt, at most ``maximum`` seconds.

    With ``jitter`` the wait is drawn uniformly from ``[delay / 2, delay]``, so
    that records failing together do not retry in lockstep.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not self.initial >= 0:
            raise ConfigurationError(f"Backoff initial must be >= 0 seconds, not {self.initial!r}")
        if not self.maximum >= self.initial:
            raise ConfigurationError(
                f"Backoff maximum ({self.maximum!r}) must be >= initial ({self.initial!r})"
            )
        if not self.multiplier >= 1:
            raise ConfigurationError(f"Backoff multiplier must be >= 1, not {self.multiplier!r}")

    @classmethod
    def constant(cls, delay: float) -> Backoff:
        """The same wait before every retry."""
        return cls(initial=delay, maximum=delay, multiplier=1.0, jitter=False)

    @classmethod
    def exponential(
        cls,
        initial: float = 0.1,
        maximum: float = 30.0,
        multiplier: float = 2.0,
        jitter: bool = True,
    ) -> Backoff:
        """Waits that grow by ``multiplier`` after each failed attempt, up to ``maximum``."""
        return cls(initial=initial, maximum=maximum, multiplier=multiplier, jitter=jitter)

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` (>= 1) attempts failed."""
        delay: float = min(self.maximum, self.initial * self.multiplier ** (failed_attempts - 1))
        if self.jitter:
            delay = random.uniform(delay / 2, delay)
        return delay


@dataclass(frozen=True, slots=True)
class Retry:
    """Run a failing record again, up to ``attempts`` times in all (the first call
    included), waiting ``backoff`` between attempts, when the error is one of ``on``.

    Errors not in ``on`` go to the handler's ``on_failure`` policy at once, as does
    a record that cannot be decoded (retrying would fail the same way).
    """

    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    on: type[Exception] | tuple[type[Exception], ...] = (Exception,)

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigurationError(f"Retry attempts must be an int >= 1, not {self.attempts!r}")
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(f"Retry backoff must be a Backoff, not {self.backoff!r}")
        on = self.on
        if isinstance(on, type):
            object.__setattr__(self, "on", on := (on,))
        if not on or not all(isinstance(t, type) and issubclass(t, Exception) for t in on):
            raise ConfigurationError(
                f"Retry on= must be Exception subclasses (a class or a tuple), not {on!r}"
            )

    def allows(self, exc: BaseException, failed_attempts: int) -> bool:
        """Whether to try again after ``failed_attempts`` attempts failed with ``exc``."""
        return failed_attempts < self.attempts and isinstance(exc, self.on)


NO_RETRY = Retry(attempts=1)
