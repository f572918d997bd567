"""Concurrency within partitions: ``ordering="key"`` and ``ordering="none"``.

Each such handler has a :class:`WorkerPool`: ``concurrency`` long-lived worker
tasks, shared by the handler's partitions. Each partition has a
:class:`KeyedLane` that decides which of its records are *ready*:

- ``key``: a record is ready when no earlier record with the same key is waiting
  or running (records without a key share one lane per partition), so records
  of a key run in offset order while different keys run concurrently;
- ``none``: every record is ready at once.

Workers take ready records round-robin across lanes. Records complete out of
order, so the lane's :class:`~._offsets.CompletionTracker` keeps the committable
offset at the lowest record not completed yet.

A record to retry does not keep its worker: it is *parked* (it still holds its
key, and the committed offset, back) and the pool's timer task makes it ready
again when its backoff is over, so other keys go on at full concurrency.

No task is created per record: a worker's cancel scope is replaced only when a
drain cancels the record it runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._lanes import BufferBound, Lane, LaneOwner, size_of
from ._offsets import CompletionTracker, PartitionOffsets
from ._pipeline import Processor

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord, TopicPartition
    from anyio.abc import TaskGroup

__all__ = ["KeyedLane", "WorkerPool"]


class WorkerPool:
    """``size`` workers running one handler's ready records, and a timer task
    that makes parked (retrying) records ready again."""

    __slots__ = (
        "_closed",
        "_idle",
        "_parked",
        "_ready",
        "_seq",
        "_timer_wakeup",
        "_workers",
        "name",
        "processor",
        "size",
    )

    def __init__(self, processor: Processor, size: int, name: str) -> None:
        self.processor = processor
        self.size = size
        self.name = name
        self._ready: deque[KeyedLane] = deque()  # lanes with ready records, round-robin
        self._idle: list[anyio.Event] = []
        self._workers: list[_Worker] = []
        self._closed = False
        # (due, seq, lane, record, lane generation): records waiting for a retry
        self._parked: list[tuple[float, int, KeyedLane, ConsumerRecord, int]] = []
        self._seq = itertools.count()
        self._timer_wakeup = anyio.Event()

    def start(self, tg: TaskGroup) -> None:
        for i in range(self.size):
            worker = _Worker(self)
            self._workers.append(worker)
            tg.start_soon(worker.run, name=f"asyncconsumer worker {self.name}#{i}")
        tg.start_soon(self._timer, name=f"asyncconsumer retry timer {self.name}")

    def park(self, lane: KeyedLane, record: ConsumerRecord, delay: float) -> None:
        """Make ``record`` ready again in ``delay`` seconds (unless its lane closes
        or seeks meanwhile)."""
        due = anyio.current_time() + delay
        parked = self._parked
        heapq.heappush(parked, (due, next(self._seq), lane, record, lane.gen))
        if parked[0][0] == due:
            self._timer_wakeup.set()  # the earliest now: the timer sleeps less

    async def _timer(self) -> None:
        parked = self._parked
        while not self._closed:
            self._timer_wakeup = wakeup = anyio.Event()
            if not parked:
                await wakeup.wait()
                continue
            wait = parked[0][0] - anyio.current_time()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await wakeup.wait()
                continue
            _, _, lane, record, gen = heapq.heappop(parked)
            if not lane.closed and gen == lane.gen:
                lane.requeue(record)

    def schedule(self, lane: KeyedLane, ready: int) -> None:
        """``lane`` has ``ready`` more records that may run."""
        if not lane.queued:
            lane.queued = True
            self._ready.append(lane)
        idle = self._idle
        while ready and idle:
            idle.pop().set()
            ready -= 1

    def close(self) -> None:
        """Stop every worker (after the lanes were drained)."""
        self._closed = True
        for worker in self._workers:
            worker.scope.cancel()
        for event in self._idle:
            event.set()
        self._idle.clear()
        self._parked.clear()
        self._timer_wakeup.set()


class _Worker:
    __slots__ = ("lane", "pool", "record", "scope")

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.scope = anyio.CancelScope(shield=True)
        self.lane: KeyedLane | None = None
        self.record: ConsumerRecord | None = None

    async def run(self) -> None:
        pool = self.pool
        while not pool._closed:
            # Shielded: only a lane's drain or the pool's close cancels a worker.
            with self.scope:
                await self._loop()
            lane, record = self.lane, self.record
            self.lane = self.record = None
            if lane is not None and record is not None:
                lane.abandon(record)  # cancelled: not completed, not committed
            self.scope = anyio.CancelScope(shield=True)

    async def _loop(self) -> None:
        pool = self.pool
        ready_lanes = pool._ready
        process = pool.processor.process
        while not pool._closed:
            if not ready_lanes:
                event = anyio.Event()
                pool._idle.append(event)
                await event.wait()
                continue
            lane = ready_lanes.popleft()
            ready = lane.ready
            if not ready:
                lane.queued = False
                continue
            record = ready.popleft()
            if ready:
                ready_lanes.append(lane)  # round-robin across partitions
            else:
                lane.queued = False
            lane.taken(record)
            offset = record.offset
            running = lane.running_workers
            running[offset] = self
            self.lane, self.record = lane, record
            gen = lane.gen
            attempts = lane.attempts
            attempt = attempts.pop(offset, 1) if attempts else 1
            try:
                delay = await process(record, attempt)
            except Exception as exc:
                self.lane = self.record = None
                del running[offset]
                lane.failed(record, exc)
                continue
            self.lane = self.record = None
            del running[offset]
            if gen != lane.gen:
                if lane.closed and not running:
                    lane.done.set()
            elif delay is None:
                lane.complete(record)
            else:
                lane.retry_later(record, attempt + 1, delay)


class KeyedLane(Lane):
    """A partition's records for a pooled handler (``key`` or ``none`` ordering)."""

    __slots__ = (
        "_buffered",
        "_keys",
        "_skip",
        "_skip_max",
        "attempts",
        "by_key",
        "gen",
        "pool",
        "queued",
        "ready",
        "running_workers",
        "tracker",
    )

    def __init__(
        self,
        tp: TopicPartition,
        pool: WorkerPool,
        offsets: PartitionOffsets,
        owner: LaneOwner,
        *,
        by_key: bool,
        bound: BufferBound,
        handler_name: str = "",
        commit_ahead: bool = False,
    ) -> None:
        super().__init__(
            tp,
            pool.processor,
            offsets,
            owner,
            bound=bound,
            handler_name=handler_name,
            commit_ahead=commit_ahead,
        )
        self.pool = pool
        self.by_key = by_key
        self.tracker = CompletionTracker(offsets)
        self.ready: deque[ConsumerRecord] = deque()
        # key -> records waiting behind the running/ready one (None: nothing waits)
        self._keys: dict[Any, deque[ConsumerRecord] | None] = {}
        self._buffered = 0
        self.running_workers: dict[int, _Worker] = {}
        self.queued = False
        self.gen = 0
        self._skip: set[int] | None = None
        self._skip_max = -1
        self.attempts: dict[int, int] = {}  # offset -> next attempt, of parked records

    @property
    def buffered(self) -> int:
        return self._buffered

    def running(self) -> Sequence[int]:
        return list(self.running_workers)

    def skip_completed(self, offsets: set[int]) -> None:
        if offsets:
            self._skip = set(offsets)
            self._skip_max = max(offsets)

    def push(self, records: list[ConsumerRecord]) -> bool:
        tracker = self.tracker
        keys = self._keys
        ready = self.ready
        by_key = self.by_key
        track = not self.commit_ahead
        new_ready = 0
        added = 0
        for record in records:
            offset = record.offset
            if track:
                tracker.receive(offset)
            skip = self._skip
            if skip is not None:
                if offset >= self._skip_max:
                    self._skip = None
                if offset in skip:
                    tracker.complete(offset)  # completed under a previous owner
                    continue
            added += 1
            if self.count_bytes:
                self.buffered_bytes += size_of(record)
            if by_key:
                key = record.key
                if key in keys:
                    waiting = keys[key]
                    if waiting is None:
                        keys[key] = waiting = deque()
                    waiting.append(record)
                    continue
                keys[key] = None
            ready.append(record)
            new_ready += 1
        self._buffered += added
        if new_ready and self.started and not self.closed:
            self.pool.schedule(self, new_ready)
        return self.full()

    def start(self, tg: TaskGroup) -> None:
        self.started = True
        if self.ready and not self.closed:
            self.pool.schedule(self, len(self.ready))

    def taken(self, record: ConsumerRecord) -> None:
        """A worker took a ready record."""
        self._buffered -= 1
        if self.count_bytes:
            self.buffered_bytes -= size_of(record)
        if self.paused:
            self._drained()

    def complete(self, record: ConsumerRecord) -> None:
        self.tracker.complete(record.offset)
        if self.by_key and not self.closed:
            key = record.key
            waiting = self._keys.get(key)
            if waiting:
                self.ready.append(waiting.popleft())
                self.pool.schedule(self, 1)
            else:
                self._keys.pop(key, None)
        if self.closed and not self.running_workers:
            self.done.set()

    def retry_later(self, record: ConsumerRecord, attempt: int, delay: float) -> None:
        """Park a failed record for a retry: it keeps its key (later records of the
        key wait) and stays uncompleted, but frees its worker."""
        if self.closed:
            if not self.running_workers:
                self.done.set()
            return
        self.attempts[record.offset] = attempt
        self.pool.park(self, record, delay)

    def requeue(self, record: ConsumerRecord) -> None:
        """A parked record's backoff is over: ready again, ahead of the others."""
        self._buffered += 1
        if self.count_bytes:
            self.buffered_bytes += size_of(record)
        self.ready.appendleft(record)
        self.pool.schedule(self, 1)

    def failed(self, record: ConsumerRecord, exc: Exception) -> None:
        first = not self.closed
        self.close()
        if first:
            self._owner.lane_failed(self, record, exc)

    def abandon(self, record: ConsumerRecord) -> None:
        self.running_workers.pop(record.offset, None)
        if self.closed and not self.running_workers:
            self.done.set()

    def _clear(self) -> None:
        self.ready.clear()
        self._keys.clear()
        self.attempts.clear()
        self._buffered = 0
        self.buffered_bytes = 0
        self._skip = None

    def discard_buffered(self) -> None:
        # The position moved (seek to beginning/end): what was received and what
        # runs now no longer counts towards the committed offset.
        self._clear()
        self.gen += 1
        self.tracker.reset()

    def seek(self, offset: int) -> None:
        self.discard_buffered()
        self.offsets.completed = offset

    def close(self) -> None:
        self.closed = True
        self.closing.set()
        self._clear()
        if not self.running_workers:
            self.done.set()

    def cancel(self) -> None:
        for worker in list(self.running_workers.values()):
            worker.scope.cancel()
