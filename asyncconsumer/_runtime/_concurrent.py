"""Concurrency within partitions: ``ordering="key"`` and ``ordering="none"``.

Each such handler has a :class:`WorkerPool`: ``concurrency`` long-lived worker
tasks, shared by the handler's partitions. Each partition has a
:class:`KeyedLane` that decides which of its records may run:

- ``key``: a record may run when no earlier record with the same key is waiting
  or running (records without a key share one lane per partition), so records
  of a key run in offset order while different keys run concurrently;
- ``none``: every record may run at once.

Workers take lanes round-robin, and run up to :data:`RUN` records of a lane in a
row (:meth:`_Worker._run`, the per-record path). A record's key is looked at when
a worker takes it, not when it arrives: a record whose key is taken waits behind
that key, and the worker looks at the next one. When handlers finish before the
next record is taken (fast handlers), no key is ever taken at that point, so
records run in offset order with no queue per key, and the key of the record
taken last is not even entered in the key table (:attr:`KeyedLane.solo`): the
fast path costs little more than a partition lane. Records may complete out of
order, so the lane's :class:`~._offsets.CompletionTracker` keeps the committable
offset at the lowest record not completed yet.

Arriving records wake one idle worker, which wakes two more if records still wait
when it lets the event loop run, and so on (:meth:`WorkerPool.wake`): with
handlers that do not suspend, the first worker runs every record before the
others get the loop, and waking more workers would wake them for nothing.

A record to retry does not keep its worker: it is *parked* (it still holds its
key, and the committed offset, back) and the pool's timer task makes it ready
again when its backoff is over, so other keys go on at full concurrency.

The *window* of a lane, the records received beyond its committable offset, is
bounded (``BufferBound.window``): one slow or retrying record holds the offset,
and the records of other keys that complete meanwhile must be remembered (and
written into every commit's metadata) until it completes. A lane whose window
is full counts as full, so its partition is left out of the poll until the
window is down to half.

A seek makes the records running at that moment *obsolete*: they run to their
end (or until a drain cancels them), complete nothing and keep their key's slot
until they finish, so records of one key never overlap, even with a replay.

No task is created per record: a worker's cancel scope is replaced only when a
drain cancels the record it runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import DeserializationError
from .._producer import TRANSACTION
from ._lanes import BufferBound, Lane, LaneOwner, size_of
from ._offsets import CompletionTracker, PartitionOffsets
from ._pipeline import Acknowledgement, Processor, abandon
from ._transactions import WorkerTransaction

if TYPE_CHECKING:
    from aiokafka.structs import TopicPartition
    from anyio.abc import TaskGroup

    from .._message import Record

__all__ = ["KeyedLane", "WorkerPool"]

RUN = 64
"""A worker runs up to this many records of a lane in a row before it takes the next
lane in turn, if another lane waits for a worker (see :meth:`_Worker._run`)."""


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
        "_waking",
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
        self._waking = 0  # idle workers woken that have not run yet
        self._workers: list[_Worker] = []
        self._closed = False
        # (due, seq, lane, record, lane generation): records waiting for a retry
        self._parked: list[tuple[float, int, KeyedLane, Record, int]] = []
        self._seq = itertools.count()
        self._timer_wakeup = anyio.Event()

    def start(self, tg: TaskGroup) -> None:
        for i in range(self.size):
            worker = _Worker(self)
            self._workers.append(worker)
            tg.start_soon(worker.run, name=f"asyncconsumer worker {self.name}#{i}")
        tg.start_soon(self._timer, name=f"asyncconsumer retry timer {self.name}")

    def park(self, lane: KeyedLane, record: Record, delay: float) -> None:
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

    def schedule(self, lane: KeyedLane) -> None:
        """``lane`` has more records that may run."""
        if not lane.queued:
            lane.queued = True
            self._ready.append(lane)
        if not self._waking:
            self.wake(1)

    def wake(self, count: int) -> None:
        """Wake up to ``count`` idle workers.

        Records arriving wake one worker (unless one is waking already), and a woken
        worker that takes a record while more may run wakes two more once it lets
        the event loop run (:meth:`spread`), so a burst reaches the whole pool in a
        few loop iterations (1, 2, 4, ...). Waking one idle worker per record
        instead woke ``concurrency`` workers per poll when handlers do not suspend:
        the first one runs every record before the others get the loop, and they
        woke for nothing (now: none)."""
        idle = self._idle
        while count and idle:
            self._waking += 1
            idle.pop().set()
            count -= 1

    def spread(self) -> None:
        """A woken worker took a record while more may run: wake two more workers
        when it lets the event loop run, if records are still waiting then (a
        handler that does not wait runs them all before: no one to wake)."""
        asyncio.get_running_loop().call_soon(self._spread)

    def _spread(self) -> None:
        if self._ready:
            self.wake(2)

    def close(self) -> None:
        """Stop every worker (after the lanes were drained)."""
        self._closed = True
        for worker in self._workers:
            worker.cancel()
        for event in self._idle:
            event.set()
        self._idle.clear()
        self._parked.clear()
        self._timer_wakeup.set()


class _Worker:
    __slots__ = ("cancelled", "lane", "pool", "scope", "sent")

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.scope = anyio.CancelScope(shield=True)
        self.cancelled = False  # scope.cancel() was called (cheaper to read than the scope)
        self.lane: KeyedLane | None = None  # while it runs records of this lane
        # delivery="exactly_once": the acknowledgements of what the record published,
        # handed to its transaction, which checks them before it commits
        self.sent: list[Acknowledgement] = []

    def cancel(self) -> None:
        self.cancelled = True
        self.scope.cancel()

    async def run(self) -> None:
        pool = self.pool
        while not pool._closed:
            # Shielded: only a lane's drain or the pool's close cancels a worker.
            with self.scope:
                await self._loop()
            lane, self.lane = self.lane, None
            abandon(self.sent)
            if lane is not None:
                lane.abandon(self)  # cancelled: not completed, not committed
            self.scope = anyio.CancelScope(shield=True)
            self.cancelled = False

    async def _loop(self) -> None:
        pool = self.pool
        ready_lanes = pool._ready
        woken = False
        routed = None  # delivery="exactly_once": the transaction this task's sends join
        view: WorkerTransaction | None = None  # (and this worker's view of it)
        while not pool._closed:
            if self.cancelled:
                # A drain cancelled the record this worker ran, but it finished
                # first: take the next record under a fresh scope, or the
                # cancellation would hit that one.
                return
            if not ready_lanes:
                event = anyio.Event()
                idle = pool._idle
                idle.append(event)
                try:
                    await event.wait()
                finally:
                    if event.is_set():
                        pool._waking -= 1
                        woken = True
                    else:  # cancelled while idle: not idle any more
                        idle.remove(event)
                continue
            lane = ready_lanes.popleft()
            if lane.hold:  # the lane's transaction commits (see _keyed_txn)
                lane.queued = False
                continue
            txn = lane.txn
            if txn is not None and txn is not routed:
                # What the handler sends joins the partition's transaction.
                routed = txn
                view = WorkerTransaction(txn)
                TRANSACTION.set(view)
            if await self._run(lane, woken, view):
                woken = False

    async def _run(self, lane: KeyedLane, woken: bool, view: WorkerTransaction | None) -> bool:
        """Run records of ``lane``, up to :data:`RUN` in a row while other lanes
        wait for a worker (more if none does); ``False`` if none may run now.

        A record may run when no record of its key runs, is parked or is ready
        (``ready`` holds those released to run next, and goes first); a record
        whose key is taken waits behind it, and the next incoming one is looked
        at. The lane stays in the pool's round-robin while this worker runs its
        records, so other workers take them too whenever a handler waits.

        This is the per-record path of ``key`` and ``none`` ordering, so the
        lane's state is read once, not per record, and a record of a lane that
        does not override :meth:`KeyedLane.complete` is completed inline.
        """
        pool = self.pool
        processor = pool.processor
        process = processor.process
        # Nothing to publish: a first attempt runs inline (what Processor.process
        # does, without a coroutine of its own per record).
        inline = processor.publish_to is None
        decode, call, observe = processor.decode, processor.call, processor.observe
        topic = lane.tp.topic
        counters = processor.counters[topic]
        ready_lanes = pool._ready
        ready = lane.ready
        incoming = lane.incoming
        by_key = lane.by_key
        keys = lane._keys
        count_bytes = lane.count_bytes
        low = lane.bound.low_records
        # Keyed by worker, not offset: after a seek back, a replayed record can run
        # while its obsolete twin (same offset) still runs.
        running = lane.running_workers
        attempts = lane.attempts
        plain = lane.plain
        # exactly_once: what a record publishes is not awaited (see published())
        txn = lane.txn
        sent = None if txn is None else self.sent
        tracker = lane.tracker
        pending = tracker.pending
        done = tracker.done
        offsets = tracker.offsets
        first = True
        left = RUN
        while True:
            # -- take the next record that may run
            if ready:
                record = ready.popleft()
            elif not incoming:
                break
            else:
                record = incoming.popleft()
                if by_key:
                    if lane.solo is not None:
                        lane.register_solo()
                    if keys and record.key in keys:
                        lane.wait_behind(record.key, record)
                        continue
                    lane.solo = record  # its key is taken (see KeyedLane.solo)
            if count_bytes:
                lane.buffered_bytes -= size_of(record)
            if first:
                # (later in the run, the check after each record covers the take)
                if lane.paused and len(incoming) <= low:
                    lane.check_drained()
                first = False
                self.lane = lane
                if ready or incoming:
                    ready_lanes.append(lane)  # round-robin across partitions
                else:
                    lane.queued = False
                if woken and ready_lanes:
                    pool.spread()  # more may run: the burst spreads (see wake())
            # -- run it
            running[self] = record
            gen = lane.gen
            attempt = attempts.pop(record.offset, 1) if attempts else 1
            try:
                if txn is not None:
                    assert view is not None
                    view.attempt_sends = 0
                    resumed = txn.failed_at.get(record.offset) if txn.failed_at else None
                    if resumed is None:
                        delay = await process(record, attempt, sent)
                    elif resumed[1] is not None:  # out of attempts (see redo)
                        attempt = resumed[0]
                        await processor.give_up((record,), resumed[1], attempt)
                        delay = None
                    else:
                        attempt = resumed[0] + 1
                        delay = await process(record, attempt, sent)
                elif not inline or attempt > 1:
                    delay = await process(record, attempt, sent)
                else:
                    try:
                        msg = record if decode is None else decode(record)
                    except DeserializationError as exc:
                        await processor.undecodable(record, exc)
                        delay = None
                    else:
                        try:
                            if observe is None:
                                await call(msg)
                            else:
                                started = perf_counter()
                                try:
                                    await call(msg)
                                finally:
                                    observe(topic, perf_counter() - started)
                        except (Exception, asyncio.CancelledError) as exc:
                            delay = await processor.raised(record, exc, attempt)
                        else:
                            counters.handled += 1
                            delay = None
            except Exception as exc:
                self.lane = None
                del running[self]
                abandon(sent)
                lane.failed(record, exc)
                return True
            # -- complete it (lane.complete, inline)
            if plain and delay is None and gen == lane.gen:
                offset = record.offset
                if pending and pending[0] == offset and not done:
                    pending.popleft()
                    offsets.completed = pending[0] if pending else offset + 1
                else:
                    tracker.complete(offset)
                if by_key:
                    if lane.solo is record:
                        lane.solo = None  # no other record was taken meanwhile
                    else:
                        waiting = keys.pop(record.key, None)
                        if waiting is not None:
                            lane.release_next(record.key, waiting)
            else:
                del running[self]
                if gen != lane.gen:
                    abandon(sent)
                    lane.obsolete(record)
                elif delay is None:
                    if sent:
                        lane.published(record, sent)
                    lane.complete(record)
                elif view is not None and txn is not None and view.attempt_sends:
                    # It failed having sent into the transaction: a retry in place
                    # would commit its outputs twice. The transaction aborts instead.
                    abandon(sent)
                    gave_up, view.gave_up = view.gave_up, None
                    lane.redo(record, attempt, gave_up, delay)
                else:
                    lane.retry_later(record, attempt + 1, delay)
            if lane.paused and len(incoming) <= low:
                lane.check_drained()  # (the records taken, the window)
            if self.cancelled or lane.closed or lane.hold:
                break
            left -= 1
            if not left:
                if ready_lanes and (len(ready_lanes) > 1 or ready_lanes[0] is not lane):
                    break  # other partitions wait: their turn
                left = RUN
        if first:  # nothing of it may run now
            lane.queued = False
            return False
        self.lane = None
        if running.pop(self, None) is not None and (lane.closed or lane.hold) and not running:
            lane._idle()
        if not lane.queued and (ready or incoming) and not lane.closed:
            lane.queued = True  # records left after this run: back in turn
            ready_lanes.append(lane)
        return True


class KeyedLane(Lane):
    """A partition's records for a pooled handler (``key`` or ``none`` ordering)."""

    __slots__ = (
        "_behind",
        "_held",
        "_keys",
        "_skip",
        "_skip_max",
        "_window_full",
        "attempts",
        "by_key",
        "gen",
        "hold",
        "incoming",
        "plain",
        "pool",
        "queued",
        "ready",
        "running_workers",
        "solo",
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
        wait_for_skip: bool = False,
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
        # Received records not looked at yet, in offset order: a worker takes the
        # first whose key is free (see _Worker._run).
        self.incoming: deque[Record] = deque()
        # Records whose key is theirs already (the next of a key whose record
        # completed, a retry whose backoff is over): they run first.
        self.ready: deque[Record] = deque()
        # Keys taken (by a record running, parked for a retry or in ``ready``) ->
        # the records of the key waiting behind it (None: none)
        # (a deque is never empty: None stands for no record waiting)
        self._keys: dict[Any, deque[Record] | None] = {}
        # The record taken last from ``incoming`` while it has not completed (it
        # runs, or waits for a retry) and no record was taken after it: its key
        # is taken too, but entered in ``_keys`` only when the next record is
        # taken (register_solo). With handlers that complete before the next
        # record is taken (fast ones), no key is ever hashed or entered.
        self.solo: Record | None = None
        self._behind = 0  # records waiting behind their key
        self.running_workers: dict[_Worker, Record] = {}
        self.queued = False
        self.hold = False  # workers leave the lane's records alone while set
        self.gen = 0
        self._skip: set[int] | None = None
        self._skip_max = -1
        # wait_for_skip: records pushed before skip_completed() wait here, so that
        # none runs before the lane knows which ones a previous owner completed.
        self._held: list[Record] | None = [] if wait_for_skip else None
        self._window_full = False  # the window filled the lane: resume at its half
        self.attempts: dict[int, int] = {}  # offset -> next attempt, of parked records
        # Workers complete the records of a lane that does not change what completing
        # means inline, without calling complete() (see _Worker._run).
        self.plain = type(self).complete is KeyedLane.complete

    @property
    def buffered(self) -> int:
        held = self._held
        buffered = len(self.incoming) + len(self.ready) + self._behind
        return buffered + len(held) if held else buffered

    @property
    def window(self) -> int:
        """Records received beyond the committable offset (not completed, or
        completed above a record that is not)."""
        return self.tracker.window

    def running(self) -> Sequence[int]:
        return [record.offset for record in self.running_workers.values()]

    def full(self) -> bool:
        if self.tracker.window >= self.bound.window:
            self._window_full = True
            return True
        return super().full()

    def _drained(self) -> None:
        # Resume at half of whatever filled the lane: a lane paused for its
        # buffer resumes with its window anywhere below the bound (it may never
        # shrink while a record is stuck), one paused for its window at half.
        window = self.tracker.window
        if window >= self.bound.window:
            self._window_full = True
        if self._window_full:
            if window > self.bound.low_window:
                return
            self._window_full = False
        super()._drained()

    def skip_completed(self, offsets: set[int]) -> None:
        """Records at these offsets already completed (under a previous owner);
        records held until now go in."""
        if offsets:
            self._skip = set(offsets)
            self._skip_max = max(offsets)
        held, self._held = self._held, None
        if held:
            if self.count_bytes:
                self.buffered_bytes -= sum(map(size_of, held))
            full = self.push(held)
            if self.paused and not full:
                self._drained()

    def push(self, records: list[Record]) -> bool:
        held = self._held
        if held is not None:
            held.extend(records)
            if self.count_bytes:
                self.buffered_bytes += sum(map(size_of, records))
            return self.full()
        if not self.commit_ahead and self._skip is None and not self.count_bytes:
            self.tracker.receive_all(records)  # the common case: no per-record work here
        else:
            records = self._admit(records)
        self.incoming.extend(records)
        if records and self.started and not self.closed:
            self.pool.schedule(self)
        return self.full()

    def register_solo(self) -> None:
        """A record is taken while :attr:`solo` runs: enter its key in ``_keys``."""
        solo = self.solo
        assert solo is not None
        self._keys[solo.key] = None
        self.solo = None

    def wait_behind(self, key: Any, record: Record) -> None:
        """``record``'s key is taken (a record of the key runs, is parked for a retry
        or is ready): it waits behind that key, and runs once the records before it
        did (see :meth:`release_next`)."""
        keys = self._keys
        waiting = keys[key]
        if waiting is None:
            keys[key] = deque((record,))
        else:
            waiting.append(record)
        self._behind += 1

    def check_drained(self) -> None:
        """Paused: tell the owner if the lane is down to its low-water marks."""
        low = self.bound.low_records
        if len(self.incoming) <= low and self.buffered <= low:
            self._drained()

    def _admit(self, records: list[Record]) -> list[Record]:
        """Receive ``records`` (unless ``at_most_once`` committed them already), drop
        those a previous owner completed, and count their bytes; return the rest."""
        tracker = self.tracker
        track = not self.commit_ahead
        admitted = []
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
            if self.count_bytes:
                self.buffered_bytes += size_of(record)
            admitted.append(record)
        return admitted

    def start(self, tg: TaskGroup) -> None:
        self.started = True
        if (self.incoming or self.ready) and not self.closed:
            self.pool.schedule(self)

    def complete(self, record: Record) -> None:
        self.tracker.complete(record.offset)
        self._release(record)
        if self.paused:
            self.check_drained()  # the window may have shrunk

    def published(self, record: Record, sent: list[Acknowledgement]) -> None:
        """``record`` completes with the acknowledgements of what it published still
        to come (``delivery="exactly_once"``: its transaction checks them)."""
        raise NotImplementedError

    def redo(self, record: Record, attempt: int, gave_up: Exception | None, delay: float) -> None:
        """Attempt ``attempt`` of ``record`` failed having sent into the partition's
        transaction (``delivery="exactly_once"``): it aborts, and its records run
        again after ``delay``; ``record`` resumes at the next attempt, or gives up
        with ``gave_up``."""
        raise NotImplementedError

    def obsolete(self, record: Record) -> None:
        """A record that ran during a seek finished: it completes nothing, and frees
        its key for the records of the new position."""
        self._release(record)

    def _release(self, record: Record) -> None:
        """``record`` no longer runs: the next record of its key may. (Called by the
        worker that ran it, which takes a ready record next: no worker to wake.)"""
        if self.solo is record:
            self.solo = None
        elif self.by_key and not self.closed:
            waiting = self._keys.pop(record.key, None)
            if waiting is not None:
                self.release_next(record.key, waiting)
        if (self.closed or self.hold) and not self.running_workers:
            self._idle()

    def release_next(self, key: Any, waiting: deque[Record]) -> None:
        """The record of ``key`` that ran is over: the first of ``waiting`` (the
        records behind it) is ready, and holds the key now."""
        self.ready.append(waiting.popleft())
        self._behind -= 1
        self._keys[key] = waiting or None
        if not self.queued:
            self.queued = True
            self.pool._ready.append(self)

    def _idle(self) -> None:
        """Closed (or held) and no record of the lane runs any more."""
        if self.closed:
            self.done.set()

    def retry_later(self, record: Record, attempt: int, delay: float) -> None:
        """Park a failed record for a retry: it keeps its key (later records of the
        key wait) and stays uncompleted, but frees its worker."""
        if not self.closed:
            self.attempts[record.offset] = attempt
            self.pool.park(self, record, delay)
        if (self.closed or self.hold) and not self.running_workers:
            self._idle()

    def requeue(self, record: Record) -> None:
        """A parked record's backoff is over: ready again, ahead of the others."""
        if self.count_bytes:
            self.buffered_bytes += size_of(record)
        self.ready.appendleft(record)
        self.pool.schedule(self)

    def failed(self, record: Record, exc: Exception) -> None:
        first = not self.closed
        self.close()
        if first:
            self._owner.lane_failed(self, record, exc)

    def abandon(self, worker: _Worker) -> None:
        """``worker``'s record was cancelled (a drain): not completed, not committed."""
        record = self.running_workers.pop(worker, None)
        if record is not None and self.solo is record:
            self.solo = None
        if (self.closed or self.hold) and not self.running_workers:
            self._idle()

    def _clear(self) -> None:
        self.incoming.clear()
        self.ready.clear()
        self._keys.clear()
        self.solo = None
        self.attempts.clear()
        self._behind = 0
        self.buffered_bytes = 0
        self._skip = None
        if self._held is not None:
            self._held = []

    def discard_buffered(self) -> None:
        # The position moved (a seek): what was received and what runs now no
        # longer counts towards the committed offset. Records running now keep
        # their keys until they finish (see obsolete()).
        self._clear()
        self.gen += 1
        self.tracker.reset()
        if self.by_key:
            for record in self.running_workers.values():
                self._keys[record.key] = None

    def seek(self, offset: int) -> None:
        self.discard_buffered()
        self.tracker.offsets.completed = offset

    def close(self) -> None:
        self.closed = True
        self._clear()
        if not self.running_workers:
            self._idle()

    def cancel(self) -> None:
        for worker in list(self.running_workers):
            worker.cancel()
