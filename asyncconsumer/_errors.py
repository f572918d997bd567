"""The exceptions asyncconsumer raises.

::

    AsyncConsumerError
    ├── ConfigurationError      bad settings or registrations, raised before anything runs
    ├── DeserializationError    a record's key or value could not be decoded
    ├── CommitError             the broker refused or failed an offset commit
    └── ConsumerStoppedError    the consumer was used after it stopped

Errors raised by user code (a handler, a rebalance hook) are never wrapped:
``ConsumerApp.run()`` re-raises the original exception, with a note naming the
record it was handling.
"""

from __future__ import annotations

__all__ = [
    "AsyncConsumerError",
    "CommitError",
    "ConfigurationError",
    "ConsumerStoppedError",
    "DeserializationError",
]


class AsyncConsumerError(Exception):
    """Base class of every error raised by asyncconsumer itself."""


class ConfigurationError(AsyncConsumerError, ValueError):
    """Invalid settings, codecs or handler registrations."""


class DeserializationError(AsyncConsumerError):
    """A record's key or value could not be decoded by its codec."""

    def __init__(self, topic: str, partition: int, offset: int, field: str) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.field = field
        super().__init__(
            f"cannot decode the {field} of the record at {topic}[{partition}]@{offset}"
        )


class CommitError(AsyncConsumerError):
    """An offset commit failed; the offsets stay uncommitted and are retried."""


class ConsumerStoppedError(AsyncConsumerError):
    """The consumer is not running (not started yet, or stopped)."""
