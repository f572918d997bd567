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

import asyncio
import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import DeserializationError, PublishError
from .._producer import TRANSACTION
from ._offsets import PartitionOffsets
from ._pipeline import Acknowledgement, Processor, abandon
from ._transactions import FENCED

if TYPE_CHECKING:
    from aiokafka.structs import TopicPartition
    from anyio.abc import TaskGroup

    from .._message import Message, Record
    from ._observe import HandlerTiming
    from ._transactions import PartitionTransactions

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

log = logging.getLogger("asyncconsumer")


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


def size_of(record: Record) -> int:
    """A record's key plus value size in bytes (raw bytes or ``None``)."""
    key, value = record.key, record.value
    return (0 if key is None else len(key)) + (0 if value is None else len(value))


class LaneOwner:
    """What a lane reports to (the engine)."""

    def lane_failed(self, lane: Lane, record: Record | None, exc: Exception) -> None:
        """``exc`` stops the app; ``record`` is where it was raised (``None``: in the
        lane's transactions, not in a record)."""
        raise NotImplementedError

    def lane_drained(self, lane: Lane) -> None:
        """The lane's buffer fell to its low-water mark while fetching was paused."""
        raise NotImplementedError

    def lane_rewind(self, lane: Lane, offset: int) -> None:
        """The lane's transaction aborted: fetch its partition again from ``offset``."""

    def lane_fenced(self, lane: Lane) -> None:
        """Another member's producer fenced the lane's: the partition is not ours."""

    async def lane_committed(self, lane: Lane, offset: int, seconds: float) -> None:
        """The lane's transaction committed ``offset`` (it took ``seconds``)."""


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
        "txn",
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
        # delivery="exactly_once": the partition's transactions (the lane commits
        # them; ``offsets.completed`` moves only when one commits).
        self.txn: PartitionTransactions | None = None

    @property
    def buffered(self) -> int:
        """Records fetched and not started yet."""
        raise NotImplementedError

    def running(self) -> Sequence[int]:
        """Offsets of the records whose handler is running (or, for ``publish_to``
        under partition ordering, whose output awaits the broker's acknowledgement)."""
        raise NotImplementedError

    def in_flight(self) -> int:
        """How many records :meth:`running` lists (cheaper)."""
        return len(self.running())

    def push(self, records: list[Record]) -> bool:
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


class _Unacked:
    """Records a partition lane has handled whose published results the broker has not
    acknowledged yet: ``publish_to`` is pipelined, so the lane goes on with the next
    record meanwhile. They complete in offset order as their acknowledgements arrive
    (one callback per acknowledgement, no task)."""

    __slots__ = ("attempt", "count", "error", "gen", "lane", "left", "msgs", "records")

    def __init__(
        self,
        lane: PartitionLane,
        records: list[Record],
        msgs: list[Message[Any]] | None,
        attempt: int,
        sent: list[Acknowledgement],
    ) -> None:
        self.lane = lane
        self.records = records
        self.msgs = msgs  # a batch's decoded messages, for when it must run again
        self.attempt = attempt
        # How many records count as handled once acknowledged (without a publish the
        # processor counted them already).
        self.count = (len(msgs) if msgs is not None else len(records)) if sent else 0
        self.gen = lane._gen
        self.error: Exception | None = None
        self.left = len(sent)
        for future in sent:
            future.add_done_callback(self)
        sent.clear()

    def __call__(self, future: Acknowledgement) -> None:
        if future.cancelled():
            error: BaseException | None = PublishError(
                "the acknowledgement of a published record was cancelled (the producer stopped)"
            )
        else:
            error = future.exception()
        if error is not None and self.error is None:
            self.error = error if isinstance(error, Exception) else PublishError(repr(error))
        self.left -= 1
        if self.left == 0 and self.gen == self.lane._gen:
            self.lane._acknowledged()


class PartitionLane(Lane):
    """One worker task runs the partition's records one at a time, in offset order.

    What a ``publish_to`` handler returns is sent without waiting for the broker's
    acknowledgement: the next record starts at once, and a record completes (its
    offset becomes committable) only when it and every record before it are
    acknowledged. At most ``bound.window`` records wait for acknowledgements. If one
    fails, the lane waits for the others, applies the failure policy to the record it
    belongs to (a retry runs the handler and publishes again), then runs every later
    record again, in offset order: each record's last output follows the last output
    of the record before it, as if the publishes had been awaited one by one.
    """

    __slots__ = (
        "_ack_failed",
        "_ack_waiting",
        "_gen",
        "_interrupt",
        "_records",
        "_sent",
        "_unacked",
        "_unacked_records",
        "_unsettled",
        "_waiting",
        "_wakeup",
        "current",
        "scope",
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
        super().__init__(
            tp,
            processor,
            offsets,
            owner,
            bound=bound,
            handler_name=handler_name,
            commit_ahead=commit_ahead,
        )
        self._records: deque[Record] = deque()
        self._wakeup = anyio.Event()
        self._waiting = False
        self._gen = 0
        self._interrupt = anyio.Event()  # ends a retry backoff: set by close() and seek()
        # Shielded: only the engine cancels a lane (after its grace period), so
        # an outer cancellation still gets a graceful drain.
        self.scope = anyio.CancelScope(shield=True)
        self.current: Record | None = None
        # publish_to pipelining: the acknowledgements of the record running now, the
        # records waiting for theirs (in offset order), how many of those still wait.
        self._sent: list[Acknowledgement] = []
        self._unacked: deque[_Unacked] = deque()
        self._unacked_records = 0
        self._unsettled = 0
        self._ack_failed = False
        self._ack_waiting = False

    @property
    def buffered(self) -> int:
        return len(self._records)

    def running(self) -> Sequence[int]:
        if not self._unacked:
            return () if self.current is None else (self.current.offset,)
        return self._unacked_offsets([] if self.current is None else [self.current.offset])

    def in_flight(self) -> int:
        return (self.current is not None) + self._unacked_records

    def _unacked_offsets(self, offsets: list[int]) -> list[int]:
        """``offsets`` plus those of the records waiting for acknowledgements."""
        offsets.extend(r.offset for entry in self._unacked for r in entry.records)
        return offsets

    def push(self, records: list[Record]) -> bool:
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
        # Records waiting for acknowledgements are not completed any more either.
        self._unacked.clear()
        self._unacked_records = 0
        self._unsettled = 0
        self._ack_failed = False
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._interrupt.set()
        self.discard_buffered()
        if not self.started:
            self.done.set()
        else:
            self._wake()

    def cancel(self) -> None:
        self.scope.cancel()

    def _wake(self) -> None:
        if self._waiting or self._ack_waiting:
            self._waiting = self._ack_waiting = False
            self._wakeup.set()

    async def _wait_for_records(self) -> None:
        self._drained()
        self._wakeup = anyio.Event()
        self._waiting = True
        await self._wakeup.wait()

    async def _wait_for_acks(self) -> None:
        self._wakeup = anyio.Event()
        self._ack_waiting = True
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

    # -- publish_to pipelining -------------------------------------------------------

    def _finish(self, records: list[Record], msgs: list[Message[Any]] | None, attempt: int) -> None:
        """``records`` are done with: complete them now, or after the acknowledgements
        of what they (or records before them) published."""
        sent = self._sent
        if sent or self._unacked:
            if sent:
                self._unsettled += 1
            self._unacked.append(_Unacked(self, records, msgs, attempt, sent))
            self._unacked_records += len(records)
        elif not self.commit_ahead:
            self.offsets.completed = records[-1].offset + 1

    def _acknowledged(self) -> None:
        """Every acknowledgement of one waiting entry is in: complete the records that
        are now acknowledged with everything before them."""
        self._unsettled -= 1
        unacked = self._unacked
        last: _Unacked | None = None
        count = 0
        while unacked:
            head = unacked[0]
            if head.left:
                break
            if head.error is not None:
                self._ack_failed = True
                break
            last = unacked.popleft()
            count += last.count
            self._unacked_records -= len(last.records)
        if last is not None and not self.commit_ahead:
            self.offsets.completed = last.records[-1].offset + 1
        if count:
            self.processor.counters[self.tp.topic].handled += count
        if self._ack_failed or (
            self._ack_waiting and (not self._unsettled or len(unacked) <= self.bound.low_window)
        ):
            self._wake()

    async def _wait_or_redo(self) -> None:
        """The window of unacknowledged records is full, or an acknowledgement failed."""
        if not self._ack_failed or self._unsettled:
            await self._wait_for_acks()
            return
        await self._redo()
        self.current = None  # (after a failure it names the record: see run)

    async def _redo(self) -> None:
        entries = list(self._unacked)
        self._unacked.clear()
        self._unacked_records = 0
        self._ack_failed = False
        gen = self._gen
        head = entries[0]
        assert head.error is not None
        self._begin(head)
        delay = await self.processor.failed(self._live(head), head.error, head.attempt)
        attempt = head.attempt
        for entry in entries:
            if entry is not head:
                if self.closed:
                    return  # not completed: the partition's next owner runs them
                self._begin(entry)
                attempt = 1
                delay = await self._attempt(entry, attempt)
            while delay is not None and await self._backoff(delay, gen):
                attempt += 1
                delay = await self._attempt(entry, attempt)
            if delay is not None or gen != self._gen:
                abandon(self._sent)
                return
            self._finish(entry.records, entry.msgs, attempt)

    def _begin(self, entry: _Unacked) -> None:
        """``entry`` runs again (what a failure would name)."""
        self.current = entry.records[0]

    def _live(self, entry: _Unacked) -> list[Record]:
        return entry.records

    async def _attempt(self, entry: _Unacked, attempt: int) -> float | None:
        return await self.processor.process(entry.records[0], attempt, self._sent)

    async def _settled(self) -> None:
        """Closed: wait for the acknowledgements of what was handled (after a failed
        one nothing more completes: the partition's next owner runs those records)."""
        while self._unsettled and not self._ack_failed:
            await self._wait_for_acks()

    # -- delivery="exactly_once" -----------------------------------------------------

    async def _transaction_done(self, next_offset: int, count: int, handled: int) -> None:
        """Records up to ``next_offset`` (``count`` of them) are done: they join the
        open transaction, which checks what they published before it commits.
        ``handled``: how many of them the processor left to count (they published)."""
        txn = self.txn
        assert txn is not None
        if self._sent:
            txn.outcomes.handled += handled
        if txn.completed(next_offset, count, self._sent):
            await self._commit_transaction()

    async def _commit_idle_transaction(self) -> None:
        """Nothing to run: commit the open transaction unless records arrive within
        ``IDLE_COMMIT_DELAY`` (or before it is due)."""
        txn = self.txn
        assert txn is not None
        with anyio.move_on_after(txn.idle_remaining()):
            await self._wait_for_records()
        if not self._records:
            await self._commit_transaction()

    async def _commit_transaction(self) -> None:
        txn = self.txn
        assert txn is not None
        started = time.monotonic()
        try:
            offset = await txn.commit()
        except FENCED as exc:
            self._fenced(exc)
            return
        except Exception as exc:
            await self._abort_transaction(exc)
            return
        self.offsets.committed = self.offsets.completed = offset
        await self._owner.lane_committed(self, offset, time.monotonic() - started)

    async def _abort_transaction(self, exc: Exception) -> None:
        """The transaction could not commit: abort it and run its records again
        (from its first offset: nothing of it was applied)."""
        txn = self.txn
        assert txn is not None
        try:
            await txn.recover(exc)  # (a new producer: sends are routed through txn)
        except FENCED as fenced:
            self._fenced(fenced)
            return
        if not self.closed:
            self._owner.lane_rewind(self, txn.first)

    def _fenced(self, exc: BaseException) -> None:
        assert self.txn is not None
        self.txn.fenced(exc)
        self.closed = True
        self.discard_buffered()
        self._owner.lane_fenced(self)

    async def _abort_on_failure(self) -> None:
        """The lane fails (``on_failure="stop"``): its open transaction's outputs must
        vanish and its offsets stay uncommitted."""
        txn = self.txn
        if txn is not None and txn.open:
            try:
                await txn.abort()
            except Exception as exc:
                log.warning("aborting the transaction of %s failed: %r", self.tp, exc)

    async def _redo_attempt(
        self, records: list[Record], attempt: int, delay: float, gen: int
    ) -> None:
        """Attempt ``attempt`` of ``records`` failed having sent into the open
        transaction: abort it, wait the retry's backoff, and run its records again
        from its first offset; ``records`` then resume at attempt ``attempt + 1``
        (or give up, when the retry policy says so)."""
        txn = self.txn
        assert txn is not None
        gave_up, txn.gave_up = txn.gave_up, None
        txn.failed_at[records[0].offset] = (attempt, gave_up)
        try:
            await txn.abort_attempt()
        except FENCED as exc:
            self._fenced(exc)
            return
        except Exception as exc:
            await self._abort_transaction(exc)  # (abort again, or a new producer)
            return
        if await self._backoff(delay, gen):
            self._owner.lane_rewind(self, txn.first)

    def _resumed(self, first: int, last: int) -> tuple[int, Exception | None] | None:
        """The attempts so far of records from ``first`` to ``last`` that failed in an
        aborted transaction, and the error to give up with (``None``: retry)."""
        assert self.txn is not None
        failed_at = self.txn.failed_at
        found = [f for o, f in failed_at.items() if first <= o <= last]
        if not found:
            return None
        return max(found, key=lambda f: (f[1] is not None, f[0]))

    async def _resumed_attempt(
        self, record: Record, sent: list[Acknowledgement]
    ) -> tuple[float | None, int]:
        """Run ``record``'s first attempt in this transaction: the next one after a
        failure that aborted the last transaction (or attempt 1); return the delay
        and the attempt."""
        resumed = self._resumed(record.offset, record.offset)
        if resumed is None:
            return await self.processor.process(record, 1, sent), 1
        attempts, gave_up = resumed
        if gave_up is not None:
            await self.processor.give_up((record,), gave_up, attempts)
            return None, attempts
        return await self.processor.process(record, attempts + 1, sent), attempts + 1

    async def _retried(self, record: Record, delay: float, gen: int) -> bool:
        """Retry ``record`` (nothing sent, no transaction) after its first attempt
        failed, ``delay`` seconds from now, until an attempt succeeds or the retry
        policy gives up (True: done with), or the lane closes or moves (False:
        abandoned, not completed)."""
        attempt = 1
        wait: float | None = delay
        while wait is not None:
            if not await self._backoff(wait, gen):
                return False
            attempt += 1
            wait = await self.processor.process(record, attempt, None)
        return gen == self._gen

    # -- the worker ------------------------------------------------------------------

    async def run(self) -> None:
        self.started = True
        records = self._records
        offsets = self.offsets
        process = self.processor.process
        count_bytes = self.count_bytes
        track = not self.commit_ahead
        unacked = self._unacked
        window = self.bound.window
        low_records = self.bound.low_records
        txn = self.txn
        processor = self.processor
        sent = self._sent if processor.publish_to is not None or txn else None
        if txn is not None:
            TRANSACTION.set(txn)  # the app's producer sends in the transaction
            txn.redo_failed = True
        # Nothing to publish, no transaction: the first attempt runs inline (what
        # Processor.process does, without a coroutine of its own per record).
        inline = sent is None
        decode, call = processor.decode, processor.call
        counters = processor.counters[self.tp.topic]
        # Handler durations (metrics on): one clock read per group of back-to-back
        # first attempts; ``left`` attempts until the open group is full (see
        # LaneTiming). A group closes whenever the lane does anything else between
        # two records (a wait, a failure's handling, a backoff).
        timing = None if processor.timing is None else LaneTiming(processor.timing, self.tp.topic)
        left = 0
        record: Record | None = None
        try:
            with self.scope:
                while not self.closed:
                    if unacked and (self._ack_failed or len(unacked) >= window):
                        await self._wait_or_redo()
                        continue
                    if not records:
                        if txn is not None and txn.open:
                            await self._commit_idle_transaction()
                        else:
                            await self._wait_for_records()
                        continue
                    if inline:
                        # The first attempts of records one after another, with
                        # nothing else per record: a lane that sends nothing never
                        # has records waiting for acknowledgements nor a
                        # transaction. Leaves when the buffer is empty (also when
                        # close() or seek() empties it during a handler).
                        if timing is not None:
                            left = timing.resume()
                        while records:
                            record = records.popleft()
                            if count_bytes:
                                self.buffered_bytes -= size_of(record)
                            self.current = record
                            gen = self._gen
                            try:
                                msg = record if decode is None else decode(record)
                            except DeserializationError as exc:
                                if timing is not None:
                                    timing.close(left)
                                await processor.undecodable(record, exc)
                                if timing is not None:
                                    left = timing.resume()
                            else:
                                try:
                                    await call(msg)
                                    if timing is not None:
                                        left -= 1
                                        if not left:
                                            left = timing.lap()
                                except (Exception, asyncio.CancelledError) as exc:
                                    if timing is not None:
                                        timing.close(left - 1)  # (with this attempt)
                                    delay = await processor.raised(record, exc, 1)
                                    done = delay is None or await self._retried(record, delay, gen)
                                    if timing is not None:
                                        left = timing.resume()
                                    if not done:
                                        continue  # abandoned: not completed
                                else:
                                    counters.handled += 1
                            if track and gen == self._gen:
                                offsets.completed = record.offset + 1
                            if self.paused and len(records) <= low_records:
                                self._drained()  # (only below the mark: not per record)
                        if timing is not None:
                            timing.close(left)
                        self.current = None
                        continue
                    record = records.popleft()
                    if count_bytes:
                        self.buffered_bytes -= size_of(record)
                    self.current = record
                    gen = self._gen
                    if txn is not None and not txn.open:
                        await txn.begin(record.offset)
                    attempt = 1
                    if txn is not None:
                        txn.attempt_sends = 0
                        if txn.failed_at:  # (after an attempt aborted a transaction)
                            assert sent is not None
                            delay, attempt = await self._resumed_attempt(record, sent)
                        else:
                            delay = await process(record, 1, sent)
                    else:
                        delay = await process(record, 1, sent)
                    while delay is not None:
                        if txn is not None and txn.attempt_sends:
                            await self._redo_attempt([record], attempt, delay, gen)
                            break
                        if not await self._backoff(delay, gen):
                            break
                        attempt += 1
                        if txn is not None:
                            txn.attempt_sends = 0
                        delay = await process(record, attempt, sent)
                    if delay is None and gen == self._gen:
                        if txn is not None:
                            self.current = None
                            await self._transaction_done(record.offset + 1, 1, 1)
                        elif sent or unacked:
                            self._finish([record], None, attempt)
                        elif track:
                            offsets.completed = record.offset + 1
                    else:
                        abandon(sent)
                    self.current = None
                    if self.paused and len(records) <= low_records:
                        self._drained()  # (only below the mark: not per record)
                await self._settled()
                if txn is not None and txn.open:
                    await self._commit_transaction()
        except Exception as exc:
            failed = self.current if self.current is not None else record
            assert failed is not None
            self.closed = True
            await self._abort_on_failure()
            self._owner.lane_failed(self, failed, exc)
        finally:
            if timing is not None:
                timing.close(left)
            self.current = None
            self.done.set()


TIMING_GROUP = 64
"""With metrics on, a partition lane reads the clock once per group of up to this many
back-to-back attempts (see LaneTiming): a scrape while a handler awaits sees up to
this many fewer observations than were made."""


class LaneTiming:
    """The handler durations of one partition lane's first attempts (metrics on),
    added to its topic's series of the histogram (see HandlerTiming.series) with one
    clock read per group of back-to-back attempts rather than one per attempt.

    An attempt starts when the one before it ended, so a group's span is the sum of
    its attempts' durations: the histogram's sum is always exact. Each attempt's
    bucket is exact in a group of one, and in a group whose span is within the
    lowest bucket bound, since each of its attempts is too. A group of several that
    spans more than that bound (an attempt slower than the ones before it) is filed
    as its other attempts at the lane's last mean and what remains of the span on one
    attempt. The group size keeps a group's expected span under half the lowest
    bound: it doubles (up to TIMING_GROUP) after a group under a quarter of it,
    halves after one over half, and drops to one after a group of several over the
    bound, so a handler slower than the bound is timed attempt by attempt.
    """

    __slots__ = ("bounds", "durations", "first", "mean", "size", "start")

    def __init__(self, timing: HandlerTiming, topic: str) -> None:
        self.durations = timing.series(topic)
        self.bounds = timing.bounds
        self.first = self.bounds[0] if self.bounds else float("inf")
        self.size = 1
        self.mean = 0.0  # seconds per attempt in the last group filed exactly
        self.start = 0.0  # when the open group started; 0: none is open

    def resume(self) -> int:
        """Open a group now; returns its size (attempts until the next lap)."""
        self.start = perf_counter()
        return self.size

    def lap(self) -> int:
        """File the open group, full, and open the next; returns its size."""
        now = perf_counter()
        self._file(self.size, now - self.start)
        self.start = now
        return self.size

    def close(self, left: int) -> None:
        """File the open group, if any, ``left`` attempts short of its size."""
        if self.start:
            count = self.size - left
            if count:
                self._file(count, perf_counter() - self.start)
            self.start = 0.0

    def _file(self, count: int, span: float) -> None:
        durations, first = self.durations, self.first
        durations[-1] += span
        if span <= first or count == 1:
            durations[0 if span <= first else bisect_left(self.bounds, span)] += count
            mean = self.mean = span / count
            expected = mean * self.size
            if expected * 4 <= first:
                if self.size < TIMING_GROUP:
                    self.size *= 2
            elif expected * 2 > first and self.size > 1:
                self.size //= 2
            return
        slowest = span - (count - 1) * self.mean
        durations[0] += count - 1
        durations[0 if slowest <= first else bisect_left(self.bounds, slowest)] += 1
        self.size = 1


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
        self._batch: list[Record] = []

    def running(self) -> Sequence[int]:
        offsets = [r.offset for r in self._batch]
        return self._unacked_offsets(offsets) if self._unacked else offsets

    def in_flight(self) -> int:
        return len(self._batch) + self._unacked_records

    def _live(self, entry: _Unacked) -> list[Record]:
        assert entry.msgs is not None
        return Processor.live(entry.records, entry.msgs)

    def _begin(self, entry: _Unacked) -> None:
        self._batch = entry.records

    async def _attempt(self, entry: _Unacked, attempt: int) -> float | None:
        assert entry.msgs is not None
        if not entry.msgs:
            return None
        return await self.processor.process_batch(entry.records, entry.msgs, attempt, self._sent)

    async def run(self) -> None:
        self.started = True
        records = self._records
        processor = self.processor
        max_records = self.max_records
        unacked = self._unacked
        window = self.bound.window
        txn = self.txn
        sent = self._sent if processor.publish_to is not None or txn else None
        if txn is not None:
            TRANSACTION.set(txn)  # the app's producer sends in the transaction
            txn.redo_failed = True
        try:
            with self.scope:
                while not self.closed:
                    if unacked and (self._ack_failed or len(unacked) >= window):
                        await self._wait_or_redo()
                        self._batch = []
                        continue
                    if not records:
                        if txn is not None and txn.open:
                            await self._commit_idle_transaction()
                        else:
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
                    if txn is not None and not txn.open:
                        await txn.begin(batch[0].offset)
                    msgs = await processor.decode_batch(batch)
                    attempt = 1
                    resumed = None
                    if txn is not None:
                        txn.attempt_sends = 0
                        if txn.failed_at:
                            resumed = self._resumed(batch[0].offset, batch[-1].offset)
                    if not msgs:
                        delay = None
                    elif resumed is None:
                        delay = await processor.process_batch(batch, msgs, 1, sent)
                    elif resumed[1] is not None:  # out of attempts: give up on it now
                        attempt = resumed[0]
                        await processor.give_up(processor.live(batch, msgs), resumed[1], attempt)
                        delay = None
                    else:
                        attempt = resumed[0] + 1
                        delay = await processor.process_batch(batch, msgs, attempt, sent)
                    while delay is not None:
                        if txn is not None and txn.attempt_sends:
                            await self._redo_attempt(batch, attempt, delay, gen)
                            break
                        if not await self._backoff(delay, gen):
                            break
                        attempt += 1
                        if txn is not None:
                            txn.attempt_sends = 0
                        delay = await processor.process_batch(batch, msgs, attempt, sent)
                    if delay is None and gen == self._gen:
                        if txn is not None:
                            await self._transaction_done(
                                batch[-1].offset + 1, len(batch), len(msgs)
                            )
                        else:
                            self._finish(batch, msgs, attempt)
                    else:
                        abandon(sent)
                    self._batch = []
                    if self.paused:
                        self._drained()
                await self._settled()
                if txn is not None and txn.open:
                    await self._commit_transaction()
        except Exception as exc:
            self.closed = True
            await self._abort_on_failure()
            # A batch fails as a whole: the partition resumes at its first record
            # (or at the record that could not be decoded, which the error names).
            failed = self._batch[0]
            if isinstance(exc, DeserializationError):
                failed = next((r for r in self._batch if r.offset == exc.offset), failed)
            self._owner.lane_failed(self, failed, exc)
        finally:
            self._batch = []
            self.done.set()
