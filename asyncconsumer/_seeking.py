"""Where a seek goes: the beginning, the end, or the first record at or after a time.

``ConsumerApp`` and ``Consumer`` look the offsets up here (``ListOffsets``), then
seek to them the one way they seek to an offset, so that every kind of seek moves
the committed position alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeAlias

from aiokafka.structs import TopicPartition

if TYPE_CHECKING:
    from ._transport import ConsumerClient

__all__ = ["SeekTarget", "Timestamp", "lookup_offsets", "timestamp_ms"]

Timestamp: TypeAlias = datetime | int
"""A point in time: a timezone-aware ``datetime``, or milliseconds since the epoch."""

SeekTarget: TypeAlias = Literal["beginning", "end"] | int  # an int: epoch milliseconds


def timestamp_ms(when: Timestamp) -> int:
    """``when`` in milliseconds since the epoch; a naive ``datetime`` is refused
    (it would silently mean the machine's local time)."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"a datetime to seek to must be timezone-aware, not {when!r} "
                "(use datetime(..., tzinfo=timezone.utc))"
            )
        return int(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, int) or when < 0:
        raise ValueError(
            f"a time to seek to is an aware datetime or epoch milliseconds >= 0, not {when!r}"
        )
    return when


async def lookup_offsets(
    client: ConsumerClient, tps: Sequence[TopicPartition], target: SeekTarget
) -> dict[TopicPartition, int]:
    """The offset of each partition's beginning, end, or first record whose
    timestamp is at or after ``target`` milliseconds (the end when there is none)."""
    if not tps:
        return {}
    if target == "beginning":
        return await client.beginning_offsets(list(tps))
    if target == "end":
        return await client.end_offsets(list(tps))
    found = await client.offsets_for_times({tp: target for tp in tps})
    past = [tp for tp in tps if found.get(tp) is None]
    ends = await client.end_offsets(past) if past else {}
    offsets: dict[TopicPartition, int] = {}
    for tp in tps:
        hit = found.get(tp)
        offsets[tp] = ends[tp] if hit is None else hit.offset
    return offsets
