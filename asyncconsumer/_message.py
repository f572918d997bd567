"""The record handed to handlers and to ``async for``: :class:`Message`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

from aiokafka.structs import TopicPartition

from ._codecs import Codec
from ._errors import DeserializationError

__all__ = ["Message", "TopicPartition", "make_decoder"]

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


Decoder = Callable[[Any], Message[Any]]
"""Builds a :class:`Message` from an aiokafka ``ConsumerRecord``."""


def make_decoder(key_codec: Codec | None, value_codec: Codec | None) -> Decoder:
    """Return a record-to-:class:`Message` function specialised for the codecs.

    This is on the per-record path, so the common cases avoid any work they do
    not need: with both codecs at ``bytes`` it builds the tuple and nothing else.
    """
    new = tuple.__new__

    if key_codec is None and value_codec is None:

        def decode_raw(r: Any) -> Message[Any]:
            return new(
                Message, (r.topic, r.partition, r.offset, r.key, r.value, r.headers, r.timestamp)
            )

        return decode_raw

    def decode(r: Any) -> Message[Any]:
        key = r.key
        if key is not None and key_codec is not None:
            try:
                key = key_codec(key)
            except Exception as exc:
                raise DeserializationError(r.topic, r.partition, r.offset, "key") from exc
        value = r.value
        if value is not None and value_codec is not None:
            try:
                value = value_codec(value)
            except Exception as exc:
                raise DeserializationError(r.topic, r.partition, r.offset, "value") from exc
        return new(Message, (r.topic, r.partition, r.offset, key, value, r.headers, r.timestamp))

    return decode
