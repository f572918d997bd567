"""The record handed to handlers and to ``async for``: :class:`Message`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

from aiokafka.structs import TopicPartition

from ._codecs import Codec
from ._errors import DeserializationError

__all__ = ["Decoder", "Message", "Record", "TopicPartition", "make_decoder"]

V = TypeVar("V")


class Message(NamedTuple, Generic[V]):
    """One consumed record, decoded. Immutable.

    ``key`` and ``value`` are what the handler's codecs made of the raw bytes
    (``None`` stays ``None``); ``timestamp`` is in milliseconds since the epoch.
    """

    topic: str
    partition: int
    offset: int
    key: Any
    value: V
    headers: Sequence[tuple[str, bytes]]
    timestamp: int

    @property
    def tp(self) -> TopicPartition:
        """The record's topic and partition."""
        return TopicPartition(self.topic, self.partition)

    def __repr__(self) -> str:
        return f"Message({self.topic}[{self.partition}]@{self.offset}, key={self.key!r})"


Record: TypeAlias = "Message[bytes | None]"
"""A record as the client seam hands it to the runtime: a :class:`Message` of the raw
key and value bytes. The aiokafka transport builds it while it decodes the fetch
response (one object per record, see ``_transport/_aiokafka.py``), so a handler
without codecs gets this very object."""

Decoder = Callable[[Record], Message[Any]]
"""Builds the handler's :class:`Message` from a raw :data:`Record` (its codecs applied)."""


def make_decoder(key_codec: Codec | None, value_codec: Codec | None) -> Decoder | None:
    """Return a record-to-:class:`Message` function specialised for the codecs, or
    ``None`` when there is nothing to decode (both at ``bytes``): the record is
    then the message, and the per-record path does no work at all for it."""
    if key_codec is None and value_codec is None:
        return None
    new = tuple.__new__

    def decode(r: Record) -> Message[Any]:
        key = r.key
        if key is not None and key_codec is not None:
            try:
                key = key_codec(key)
            except Exception as exc:
                raise DeserializationError(r.topic, r.partition, r.offset, "key") from exc
        value: Any = r.value
        if value is not None and value_codec is not None:
            try:
                value = value_codec(value)
            except Exception as exc:
                raise DeserializationError(r.topic, r.partition, r.offset, "value") from exc
        return new(Message, (r.topic, r.partition, r.offset, key, value, r.headers, r.timestamp))

    return decode


def as_record(r: Any) -> Record:
    """A :data:`Record` of anything with a ``ConsumerRecord``'s fields (the in-memory
    client's records, tests)."""
    return tuple.__new__(
        Message, (r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers), r.timestamp)
    )
