"""The exceptions asyncconsumer raises.

::

    AsyncConsumerError
    ├── ConfigurationError      bad settings or registrations, raised before anything runs
    ├── DeserializationError    a record's key or value could not be decoded
    ├── CommitError             the broker refused or failed an offset commit
    ├── DeadLetterError         a failed record could not be published to its dead-letter topic
    ├── AuthenticationError     a broker refused the client's credentials or TLS handshake
    ├── PublishError            a publish_to result's acknowledgement was cancelled
    ├── HandlerCancelledError   a handler raised CancelledError that no cancellation caused
    └── ConsumerStoppedError    the consumer was used after it stopped

Errors raised by user code (a handler, a rebalance hook) are never wrapped:
``ConsumerApp.run()`` re-raises the original exception, with a note naming the
record it was handling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiokafka.structs import TopicPartition

__all__ = [
    "AsyncConsumerError",
    "AuthenticationError",
    "CommitError",
    "ConfigurationError",
    "ConsumerStoppedError",
    "DeadLetterError",
    "DeserializationError",
    "HandlerCancelledError",
    "PublishError",
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
    """An offset commit failed; the offsets stay uncommitted and are retried.

    ``offsets`` are the offsets (per partition, the next record to read) that the
    commit tried to store.
    """

    def __init__(self, message: str, offsets: dict[TopicPartition, int] | None = None) -> None:
        super().__init__(message)
        self.offsets: dict[TopicPartition, int] = offsets or {}


class DeadLetterError(AsyncConsumerError):
    """A record that failed could not be published to its dead-letter topic; the
    app stops without committing it (it is not lost). The original failure is in
    the exception's notes, the publishing error is its ``__cause__``."""


class AuthenticationError(AsyncConsumerError):
    """A connection to ``broker`` (``host:port``) failed for a reason that retrying
    does not cure: the SASL credentials were refused (a wrong password or an unknown
    user), the broker's certificate is not trusted, the broker refused the client's
    certificate, or the broker closed the connection during the handshake (usually a
    plaintext client on a TLS listener, or the other way round). ``cause`` says which,
    in words; the message names the broker and the cause, never a secret.

    Raised by ``start()`` (and ``ConsumerApp.run()``) instead of retrying; the
    aiokafka error it was detected from is the ``__cause__``.
    """

    def __init__(self, broker: str, cause: str) -> None:
        self.broker = broker
        self.cause = cause
        super().__init__(f"cannot connect to the Kafka broker {broker}: {cause}")

    def __reduce__(self) -> tuple[type[AuthenticationError], tuple[str, str]]:
        return type(self), (self.broker, self.cause)


class PublishError(AsyncConsumerError):
    """A record a ``publish_to`` handler returned was not acknowledged by the broker
    for a reason without an error of its own (the producer stopped first). Like any
    publish failure, it is a failure of the consumed record (``retry``, then
    ``on_failure``)."""


class HandlerCancelledError(AsyncConsumerError):
    """A handler let ``CancelledError`` escape although nothing cancelled it: it
    awaited a task or future that someone else cancelled. It is a failure of the
    record like any other (``retry``, then ``on_failure``); the ``CancelledError``
    is the ``__cause__``. Real cancellations (a stop's or revoke's deadline,
    ``abort()``) are not this: they cancel the handler and the record is not
    committed."""


class ConsumerStoppedError(AsyncConsumerError):
    """The consumer is not running (not started yet, or stopped)."""
