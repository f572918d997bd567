"""Partition lanes: what runs the records of one assigned partition.

A lane owns the fetched, not yet started records of its partition and decides
which of them may run, and when each counts as completed: it moves the
partition's ``completed`` offset, the only thing the commit task ever commits,
so a record that is still running, was cancelled or failed is never committed.
What running a record means (decoding, middleware, the handler, publishing, the
failure policy) is the handler's :class:`~._pipeline.Processor`; when it asks
for a retry, the lane waits the backoff without holding up other partitions.

- :class:`PartitionLane` (``ordering="partition"``): one long-lived worker runs
  the records one at a time, in offset order.
- :class:`BatchLane` (``@app.batch_handler``): the same, a list at a time.
- :class:`~._concurrent.KeyedLane` (``ordering="key"`` / ``"none"``): records go
  to the handler's pool of workers, same-key records in offset order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from .._errors import DeserializationError
from ._offsets import PartitionOffsets
from ._pipeline import Processor

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord, TopicPartition
    from anyio.abc import TaskGroup

__all__ = [
    "DEFAULT_WINDOW",
    "BatchLane",
    "BufferBound",
    "Lane",
    "LaneOwner",
    "PartitionLane",
    "size_of",
]


DEFAULT_WINDOW = 10_000


class BufferBound:
    """How much a lane may hold: records fetched and not started, optionally their
    bytes (keys plus values), and, for lanes that complete out of order, the
    *window*: records received beyond the partition's committable offset.

    Fetching of a partition stops when any is reached and starts again when all
    are down to half.
    """

    __slots__ = ("bytes", "low_bytes", "low_records", "low_window", "records", "window")

    def __init__(
        self, records: int, bytes: int | None = None, window: int = DEFAULT_WINDOW
    ) -> None:
        self.records = records
        self.bytes = bytes
        self.window = window
        self.low_records = records // 2
        self.low_bytes = bytes // 2 if bytes is not None else 0
        self.low_window = window // 2


def size_of(record: ConsumerRecord) -> int:
    """A record's key plus value size in bytes (aiokafka says -1 for None)."""
    size: int = max(record.serialized_key_size, 0) + max(record.serialized_value_size, 0)
    return size


class LaneOwner:
    """What a lane reports to (the engine)."""

    def lane_failed(self, lane: Lane, record: ConsumerRecord, exc: Exception) -> None:
        raise NotImplementedError

    def lane_drained(self, lane: Lane) -> None:
        """The lane's buffer fell to its low-water mark while fetching was paused."""
        raise NotImplementedError


class Lane:
    """The state every lane has, and the interface the engine uses."""

    __slots__ = (
        "_owner",
        "bound",
        "buffered_bytes",
        "closed",
        "commit_ahead",
        "count_bytes",
        "done",
        "handler_name",
        "offsets",
        "paused",
        "processor",
        "started",
        "tp",
    )

    def __init__(
        self,
        tp: TopicPartition,
        processor: Processor,
        offsets: PartitionOffsets,
        owner: LaneOwner,
        *,
        bound: BufferBound,
        handler_name: str = "",
        commit_ahead: bool = False,
    ) -> None:
        self.tp = tp
        self.processor = processor
        # at_most_once: the engine commits records' offsets before pushing them
        # here, so the lane must not move ``completed`` (it would go backwards).
        self.commit_ahead = commit_ahead
        self.offsets = offsets
        self.bound = bound
        self.count_bytes = bound.bytes is not None
        self.buffered_bytes = 0
        self.handler_name = handler_name
        self._owner = owner
        self.done = anyio.Event()  # set once closed and nothing runs any more
        self.started = False
        self.closed = False
        self.paused = False

    @property
    def buffered(self) -> int:
        """Records fetched and not started yet."""
        raise NotImplementedError

    def running(self) -> Sequence[int]:
        """Offsets of the records whose handler is running."""
        raise NotImplementedError

    def push(self, records: list[ConsumerRecord]) -> bool:
        """Queue fetched records (in offset order); return whether the lane is full."""
        raise NotImplementedError

    def full(self) -> bool:
        bound = self.bound
        return self.buffered >= bound.records or (
            self.count_bytes and self.buffered_bytes >= bound.bytes  # type: ignore[operator]
        )

    def start(self, tg: TaskGroup) -> None:
        """Begin running records (after ``on_assign`` returned)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop taking records: running ones finish, buffered ones are dropped
        (never handled nor committed: the partition's next owner reads them)."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Cancel the running records (after the grace period): not committed."""
        raise NotImplementedError

    def seek(self, offset: int) -> None:
        """The next record is at ``offset``; it is also what gets committed until a
        record after it completes (Kafka commits the position)."""
        raise NotImplementedError

    def discard_buffered(self) -> None:
        raise NotImplementedError

    def skip_completed(self, offsets: set[int]) -> None:
        """Records at these offsets already completed (under a previous owner)."""

    def _drained(self) -> None:
        """Tell the owner when a full lane is down to half (both records and bytes)."""
        bound = self.bound
        if (
            self.paused
            and self.buffered <= bound.low_records
            and self.buffered_bytes <= bound.low_bytes
        ):
            self._owner.lane_drained(self)


class PartitionLane(Lane):
    """One worker task runs the partition's records one at a time, in offset order."""

    __slots__ = ("_gen", "_interrupt", "_records", "_waiting", "_wakeup", "current", "scope")

    def __init__(
        self,
        tp: TopicPartition,
        processor: Processor,
        offsets: PartitionOffsets,
        owner: LaneOwner,
        *,
        bound: BufferBound,
        handler_name: str = "",
        commit_ahead: bool = False,
    ) -> None:
        super().__init__(
            tp,
            processor,
            offsets,
            owner,
            bound=bound,
            handler_name=handler_name,
            commit_ahead=commit_ahead,
        )
        self._records: deque[ConsumerRecord] = deque()
        self._wakeup = anyio.Event()
        self._waiting = False
        self._gen = 0
        self._interrupt = anyio.Event()  # ends a retry backoff: set by close() and seek()
        # Shielded: only the engine cancels a lane (after its grace period), so
        # an outer cancellation still gets a graceful drain.
        self.scope = anyio.CancelScope(shield=True)
        self.current: ConsumerRecord | None = None

    @property
    def buffered(self) -> int:
        return len(self._records)

    def running(self) -> Sequence[int]:
        return () if self.current is None else (self.current.offset,)

    def push(self, records: list[ConsumerRecord]) -> bool:
        self._records.extend(records)
        if self.count_bytes:
            self.buffered_bytes += sum(map(size_of, records))
        if self._waiting:
            self._waiting = False
            self._wakeup.set()
        return self.full()

    def start(self, tg: TaskGroup) -> None:
        if not self.closed:
            tg.start_soon(self.run, name=f"asyncconsumer lane {self.tp.topic}[{self.tp.partition}]")

    def discard_buffered(self) -> None:
        self._records.clear()
        self.buffered_bytes = 0

    def seek(self, offset: int) -> None:
        self.discard_buffered()
        self._gen += 1  # a record in flight now must not move ``completed``
        self.offsets.completed = offset
        self._interrupt.set()  # a record in backoff is abandoned now, not retried

    def close(self) -> None:
        self.closed = True
        self._interrupt.set()
        self.discard_buffered()
        if not self.started:
            self.done.set()
        elif self._waiting:
            self._waiting = False
            self._wakeup.set()

    def cancel(self) -> None:
        self.scope.cancel()

    async def _wait_for_records(self) -> None:
        self._drained()
        self._wakeup = anyio.Event()
        self._waiting = True
        await self._wakeup.wait()

    async def _backoff(self, delay: float, gen: int) -> bool:
        """Wait ``delay`` seconds before a retry; ``False`` if the lane closed or
        moved (a seek) meanwhile: the record is then abandoned, not completed."""
        if self.closed or gen != self._gen:
            return False
        self._interrupt = interrupt = anyio.Event()
        with anyio.move_on_after(delay):
            await interrupt.wait()
        return not self.closed and gen == self._gen

    async def run(self) -> None:
        self.started = True
        records = self._records
        offsets = self.offsets
        process = self.processor.process
        count_bytes = self.count_bytes
        track = not self.commit_ahead
        record: ConsumerRecord | None = None
        try:
            with self.scope:
                while not self.closed:
                    if not records:
                        await self._wait_for_records()
                        continue
                    record = records.popleft()
                    if count_bytes:
                        self.buffered_bytes -= size_of(record)
                    self.current = record
                    gen = self._gen
                    delay = await process(record)
                    attempt = 1
                    while delay is not None and await self._backoff(delay, gen):
                        attempt += 1
                        delay = await process(record, attempt)
                    if delay is None and gen == self._gen and track:
                        offsets.completed = record.offset + 1
                    self.current = None
                    if self.paused:
                        self._drained()
        except Exception as exc:
            assert record is not None
            self.closed = True
            self._owner.lane_failed(self, record, exc)
        finally:
            self.current = None
            self.done.set()


class BatchLane(PartitionLane):
    """Like :class:`PartitionLane`, a list of up to ``max_records`` records at a
    time; it waits up to ``max_wait`` seconds for a short batch to fill."""

    __slots__ = ("_batch", "max_records", "max_wait")

    def __init__(
        self,
        tp: TopicPartition,
        processor: Processor,
        offsets: PartitionOffsets,
        owner: LaneOwner,
        *,
        bound: BufferBound,
        max_records: int,
        max_wait: float,
        handler_name: str = "",
        commit_ahead: bool = False,
    ) -> None:
        super().__init__(
            tp,
            processor,
            offsets,
            owner,
            bound=bound,
            handler_name=handler_name,
            commit_ahead=commit_ahead,
        )
        self.max_records = max_records
        self.max_wait = max_wait
        self._batch: list[ConsumerRecord] = []

    def running(self) -> Sequence[int]:
        return [r.offset for r in self._batch]

    async def run(self) -> None:
        self.started = True
        records = self._records
        offsets = self.offsets
        processor = self.processor
        max_records = self.max_records
        track = not self.commit_ahead
        try:
            with self.scope:
                while not self.closed:
                    if not records:
                        await self._wait_for_records()
                        continue
                    if len(records) < max_records and self.max_wait > 0:
                        with anyio.move_on_after(self.max_wait):
                            while len(records) < max_records and not self.closed:
                                await self._wait_for_records()
                        if self.closed or not records:
                            continue
                    if len(records) <= max_records:
                        batch = list(records)
                        records.clear()
                    else:
                        popleft = records.popleft
                        batch = [popleft() for _ in range(max_records)]
                    self._batch = batch
                    if self.count_bytes:
                        self.buffered_bytes -= sum(map(size_of, batch))
                    gen = self._gen
                    msgs = await processor.decode_batch(batch)
                    delay = await processor.process_batch(batch, msgs) if msgs else None
                    attempt = 1
                    while delay is not None and await self._backoff(delay, gen):
                        attempt += 1
                        delay = await processor.process_batch(batch, msgs, attempt)
                    if delay is None and gen == self._gen and track:
                        offsets.completed = batch[-1].offset + 1
                    self._batch = []
                    if self.paused:
                        self._drained()
        except Exception as exc:
            self.closed = True
            # A batch fails as a whole: the partition resumes at its first record
            # (or at the record that could not be decoded, which the error names).
            failed = self._batch[0]
            if isinstance(exc, DeserializationError):
                failed = next((r for r in self._batch if r.offset == exc.offset), failed)
            self._owner.lane_failed(self, failed, exc)
        finally:
            self._batch = []
            self.done.set()
