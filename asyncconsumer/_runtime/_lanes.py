"""Partition lanes: one long-lived worker per assigned partition.

A lane owns the fetched, not yet handled records of its partition and runs
them through the handler one at a time, in offset order. After a handler
returns, the lane moves the partition's ``completed`` offset past the record:
that is the only thing the commit task ever commits, so a record that is still
running, was cancelled or failed is never committed.

This is also where ordering modes (per key, unordered) will plug in: a lane
decides which of its records may run and when each counts as completed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._message import Decoder, Message
from ._offsets import PartitionOffsets

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord, TopicPartition

__all__ = ["Handler", "LaneOwner", "PartitionLane"]

Handler = Callable[[Message[Any]], Awaitable[None]]


class LaneOwner:
    """What a lane reports to (the engine)."""

    def lane_failed(self, lane: PartitionLane, record: ConsumerRecord, exc: Exception) -> None:
        raise NotImplementedError

    def lane_drained(self, lane: PartitionLane) -> None:
        """The lane's buffer fell to its low-water mark while fetching was paused."""
        raise NotImplementedError


class PartitionLane:
    __slots__ = (
        "_gen",
        "_owner",
        "_records",
        "_waiting",
        "_wakeup",
        "closed",
        "current",
        "decode",
        "done",
        "handler",
        "handler_name",
        "low_water",
        "offsets",
        "paused",
        "scope",
        "started",
        "tp",
    )

    def __init__(
        self,
        tp: TopicPartition,
        handler: Handler,
        decode: Decoder,
        offsets: PartitionOffsets,
        owner: LaneOwner,
        *,
        low_water: int,
        handler_name: str = "",
    ) -> None:
        self.tp = tp
        self.handler = handler
        self.handler_name = handler_name
        self.decode = decode
        self.offsets = offsets
        self.low_water = low_water
        self._owner = owner
        self._records: deque[ConsumerRecord] = deque()
        self._wakeup = anyio.Event()
        self._waiting = False
        self._gen = 0
        # Shielded: only the engine cancels a lane (after its drain timeout), so
        # an outer cancellation still gets a graceful drain.
        self.scope = anyio.CancelScope(shield=True)
        self.done = anyio.Event()
        self.started = False
        self.closed = False
        self.paused = False
        self.current: ConsumerRecord | None = None

    @property
    def buffered(self) -> int:
        """Records fetched and not started yet."""
        return len(self._records)

    def push(self, records: list[ConsumerRecord]) -> int:
        """Queue fetched records; return how many are now buffered."""
        buf = self._records
        buf.extend(records)
        if self._waiting:
            self._waiting = False
            self._wakeup.set()
        return len(buf)

    def discard_buffered(self) -> None:
        """Drop records not started yet (they were never handled nor committed)."""
        self._records.clear()

    def seek(self, offset: int) -> None:
        """The next record handled is at ``offset``; it is also what gets committed
        until a record after it completes (Kafka commits the position)."""
        self._records.clear()
        self._gen += 1  # a record in flight now must not move ``completed``
        self.offsets.completed = offset

    def close(self) -> None:
        """Stop taking records: the one in flight finishes, the buffered ones are dropped."""
        self.closed = True
        self._records.clear()
        if not self.started:
            self.done.set()
        elif self._waiting:
            self._waiting = False
            self._wakeup.set()

    async def run(self) -> None:
        self.started = True
        records = self._records
        offsets = self.offsets
        handler = self.handler
        decode = self.decode
        owner = self._owner
        record: ConsumerRecord | None = None
        try:
            with self.scope:
                while not self.closed:
                    if not records:
                        if self.paused:
                            owner.lane_drained(self)
                        self._wakeup = anyio.Event()
                        self._waiting = True
                        await self._wakeup.wait()
                        continue
                    record = records.popleft()
                    self.current = record
                    gen = self._gen
                    await handler(decode(record))
                    if gen == self._gen:
                        offsets.completed = record.offset + 1
                    self.current = None
                    if self.paused and len(records) <= self.low_water:
                        owner.lane_drained(self)
        except Exception as exc:
            assert record is not None
            self.closed = True
            owner.lane_failed(self, record, exc)
        finally:
            self.current = None
            self.done.set()
