"""``delivery="exactly_once"`` under ``ordering="key"`` and ``ordering="none"``.

The records of such a partition run concurrently on the handler's pool and complete
out of order (see ``_concurrent``), but a partition still has one transactional
producer and one transaction open at a time (see ``_transactions``). The rule that
keeps exactly-once: *a record's outputs belong to the transaction that records it as
completed*, either because the committed offset passes it or because the commit
metadata lists it among the completed offsets above that offset.

So a transaction commits only when none of the partition's records is running: when
it is due (``commit_interval`` after its first completed record, at ``max_records``
completed records, or once the partition has had nothing to run for
``IDLE_COMMIT_DELAY``), the lane is *held* (workers take none of its records and run other
partitions' meanwhile), the records running finish and complete into it, and it
commits the partition's committable offset with the completed offsets above it in the
metadata (``send_offsets_to_transaction``). Then the next transaction begins and the
workers take the partition's records again. A record therefore never runs across a
commit: what it sent is in the transaction that completes it. The price is that a
commit waits for the slowest record running at that moment.

If the commit fails, the transaction aborts: the lane is sought back to the last
committed offset, and the records its metadata lists are skipped again (exactly those
whose completion was committed); every record completed in the aborted transaction
runs again. A record that fails with ``on_failure="stop"`` or is cancelled by a drain
leaves outputs that no commit may carry: the lane's open transaction is aborted when
its running records are over.

One task per lane runs the transactions (begin, wait until due, hold, commit or
abort); workers only complete records into the open transaction and count them. A
record does not await the acknowledgements of what it published: the worker hands
them to the transaction (:meth:`TransactionalKeyedLane.published`), whose commit
checks them first (a refused one aborts it, and its records run again).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
from aiokafka.errors import IllegalOperation

from ._concurrent import KeyedLane
from ._offsets import CompletionTracker, PartitionOffsets, decode_completed, encode_completed
from ._transactions import FENCED, caused_by

if TYPE_CHECKING:
    from aiokafka.structs import OffsetAndMetadata, TopicPartition
    from anyio.abc import TaskGroup

    from .._message import Record
    from ._concurrent import WorkerPool, _Worker
    from ._lanes import BufferBound, LaneOwner
    from ._pipeline import Acknowledgement
    from ._transactions import PartitionTransactions

__all__ = ["TransactionalKeyedLane"]

log = logging.getLogger("asyncconsumer")


class TransactionalKeyedLane(KeyedLane):
    """A :class:`KeyedLane` whose completions commit in Kafka transactions.

    ``offsets`` (the engine's book) moves only when a transaction commits, so the
    engine's own commits never carry this partition; the completion tracker keeps the
    lane's progress in ``progress`` instead."""

    __slots__ = (
        "_abort",
        "_broken",
        "_quiet",
        "_redo",
        "_wakeup",
        "base",
        "committed_metadata",
        "progress",
        "scope",
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
    ) -> None:
        super().__init__(
            tp,
            pool,
            offsets,
            owner,
            by_key=by_key,
            bound=bound,
            handler_name=handler_name,
            wait_for_skip=True,  # until resume_at(): the committed offset and metadata
        )
        offsets.above = None
        self.progress = PartitionOffsets()
        self.tracker = CompletionTracker(self.progress)
        self.hold = True  # until the first transaction is open
        self.base = -1  # where the lane began, when nothing was committed (for a rewind)
        self.committed_metadata = ""  # the metadata of the last committed offset
        self._abort = False  # what the open transaction holds must not commit
        self._broken: Exception | None = None  # why it cannot commit (it aborts at once)
        self._quiet: anyio.Event | None = None  # set once no record runs (while held)
        # A record failed having sent into the transaction: the seconds to wait
        # (its retry's backoff) between the abort and the rewind; None: no redo.
        self._redo: float | None = None
        self._wakeup = anyio.Event()
        self.scope = anyio.CancelScope(shield=True)  # only the engine cancels it

    # -- what the engine calls -------------------------------------------------------

    def resume_at(self, committed: OffsetAndMetadata | None) -> None:
        """The partition's committed offset and metadata, read after this lane's
        producer fenced the previous owner (the engine sought the lane there): the
        records the metadata lists completed already, and are skipped."""
        skip: set[int] = set()
        if committed is not None and committed.offset >= 0:
            self.offsets.committed = self.offsets.completed = committed.offset
            self.committed_metadata = committed.metadata or ""
            skip = decode_completed(committed.offset, committed.metadata)
        self.skip_completed(skip)

    def start(self, tg: TaskGroup) -> None:
        self.started = True
        if self.closed:
            self.done.set()
            return
        name = f"asyncconsumer transactions {self.tp.topic}[{self.tp.partition}]"
        tg.start_soon(self._run, name=name)

    def push(self, records: list[Record]) -> bool:
        if self.base < 0 and records and self._held is None:
            self.base = records[0].offset
        return super().push(records)

    def close(self) -> None:
        super().close()
        self._wakeup.set()

    def cancel(self) -> None:
        super().cancel()
        self.scope.cancel()

    # -- what the workers call -------------------------------------------------------

    def complete(self, record: Record) -> None:
        super().complete(record)
        txn = self.txn
        assert txn is not None
        txn.records += 1
        if txn.records == 1:
            txn.began = time.monotonic()  # due interval seconds from now
            self._wakeup.set()
        elif txn.records >= txn.max_records or not (
            self.running_workers or self.incoming or self.ready
        ):
            self._wakeup.set()  # due, or nothing more to run: see _until_due

    def published(self, record: Record, sent: list[Acknowledgement]) -> None:
        # The record completes now: its transaction checks these before it commits
        # (a refused one aborts it, and its records run again).
        txn = self.txn
        assert txn is not None
        txn.pending.extend(sent)
        sent.clear()
        txn.outcomes.handled += 1

    def failed(self, record: Record, exc: Exception) -> None:
        if self.closed:
            self._abort = True  # what it sent before it failed must vanish
        elif caused_by(exc, FENCED):
            self._fenced(exc)
        elif caused_by(exc, IllegalOperation):
            # The producer left its transaction (a send failed, or it is fenced):
            # not the record's fault. The transaction aborts now, and the record runs
            # again with the others.
            self._broken = exc
            self._wakeup.set()
        else:
            self._abort = True  # what it sent before it failed must vanish
            super().failed(record, exc)
        if (self.closed or self.hold) and not self.running_workers:
            self._idle()  # it may have been the last record a commit waits for

    def redo(self, record: Record, attempt: int, gave_up: Exception | None, delay: float) -> None:
        txn = self.txn
        assert txn is not None
        if not self.closed:
            txn.failed_at[record.offset] = (attempt, gave_up)
            self._redo = max(delay, self._redo or 0.0)
            self.hold = True  # no more records into a transaction that aborts
            self._wakeup.set()
        self._abort = True  # what it sent must not commit, even if the lane closes now
        self._release(record)

    def abandon(self, worker: _Worker) -> None:
        self._abort = True  # cancelled mid-way: what it sent must vanish
        super().abandon(worker)

    def _idle(self) -> None:
        if not self.started:
            if self.closed:
                self.done.set()
            return
        quiet = self._quiet
        if quiet is not None:
            quiet.set()

    # -- the transactions ------------------------------------------------------------

    async def _run(self) -> None:
        txn = self.txn
        assert txn is not None
        try:
            with self.scope:
                while not self.closed:
                    if not txn.open:
                        await txn.begin(self.tracker.committable()[0])
                    self._let_run()
                    await self._until_due(txn)
                    await self._until_quiet()
                    if not self.closed:
                        await self._commit(txn)
                await self._until_quiet()
                if txn.open:
                    if self._abort:
                        await self._abort_open(txn)
                    elif txn.records or self._broken is not None:
                        await self._commit(txn)  # before the revoke or stop
                    else:
                        await self._abort_open(txn, failed=False)  # nothing completed
        except Exception as exc:
            self.closed = True
            self._clear()
            if not self._abort:  # else the record's failure is what stops the app
                self._owner.lane_failed(self, None, exc)
        finally:
            self.hold = False
            self.done.set()

    def _let_run(self) -> None:
        self.hold = False
        if (self.ready or self.incoming) and not self.closed:
            self.pool.schedule(self)

    async def _wait(self) -> None:
        self._wakeup = wakeup = anyio.Event()
        await wakeup.wait()

    async def _until_due(self, txn: PartitionTransactions) -> None:
        """Until a record completed in the transaction ``interval`` seconds ago, or
        ``max_records`` did, or the partition had nothing to run for
        ``IDLE_COMMIT_DELAY``, or the lane closed."""
        while not self.closed and not txn.records and self._broken is None and self._redo is None:
            await self._wait()
        while (
            not self.closed
            and txn.records < txn.max_records
            and self._broken is None
            and self._redo is None
        ):
            idle = self._idle_now()
            remaining = txn.idle_remaining() if idle else txn.remaining()
            if remaining <= 0:
                return
            with anyio.move_on_after(remaining) as waited:
                await self._wait()
            if idle and waited.cancelled_caught and self._idle_now():
                return

    def _idle_now(self) -> bool:
        """Nothing of the partition runs or may run (a record parked for a retry
        waits for its backoff)."""
        return not (self.running_workers or self.incoming or self.ready)

    async def _until_quiet(self) -> None:
        """Hold the lane until none of its records runs."""
        self.hold = True
        while self.running_workers:
            self._quiet = quiet = anyio.Event()
            await quiet.wait()
        self._quiet = None

    async def _commit(self, txn: PartitionTransactions) -> None:
        if self._redo is not None:
            await self._redo_failed(txn)
            return
        broken, self._broken = self._broken, None
        if broken is not None:
            # The producer left its transaction: an abortable error, or fenced by a
            # new owner before it learned so. Then it cannot abort, and a new producer
            # would fence the new owner in turn: the member rejoins instead.
            await self._recover(txn, broken, replace=False)
            return
        offset, above = self.tracker.committable()
        assert offset >= 0
        txn.next_offset = offset
        txn.metadata = encode_completed(offset, above) if above else ""
        started = time.monotonic()
        try:
            await txn.commit()
        except FENCED as exc:
            self._fenced(exc)
            return
        except Exception as exc:  # an output the broker refused, a timeout, ...
            await self._recover(txn, exc, replace=not caused_by(exc, IllegalOperation))
            return
        self.offsets.committed = self.offsets.completed = offset
        self.committed_metadata = txn.metadata
        await self._owner.lane_committed(self, offset, time.monotonic() - started)

    async def _redo_failed(self, txn: PartitionTransactions) -> None:
        """A record failed having sent into the transaction (see :meth:`redo`):
        abort it, wait the record's retry backoff, and run its records again."""
        delay, self._redo = self._redo or 0.0, None
        self._broken = None  # (the abort covers it)
        try:
            await txn.abort_attempt()
        except FENCED as exc:
            self._fenced(exc)
            return
        except Exception as exc:
            # As a refused send: it may have been fenced without being told.
            await self._recover(txn, exc, replace=False)
            return
        self._abort = False
        with anyio.move_on_after(delay):
            while not self.closed:
                await self._wait()
        if not self.closed:
            self._rewind()

    async def _recover(
        self, txn: PartitionTransactions, exc: Exception, *, replace: bool = True
    ) -> None:
        """The commit failed: abort (the workers route to a new producer if it had to
        be replaced) and run the transaction's records again."""
        try:
            await txn.recover(exc, replace=replace)
        except FENCED as fenced:
            self._fenced(fenced)
            return
        except Exception as abort_error:
            if replace or abort_error is exc:
                raise  # aborted too often in a row: the app stops on it
            self._fenced(abort_error)  # cannot abort: the member rejoins
            return
        if not self.closed:
            self._rewind()

    def _rewind(self) -> None:
        """Back to the last committed offset: the records the committed metadata lists
        are skipped again, every other one runs again."""
        offset = self.offsets.committed
        skip: set[int] = set()
        if offset >= 0:
            skip = decode_completed(offset, self.committed_metadata)
        else:
            offset = self.base  # nothing committed yet: where the lane began
        if offset < 0:
            return
        gen = self.gen
        self._owner.lane_rewind(self, offset)  # seeks the client and this lane
        if gen == self.gen:  # not sought: the partition is no longer this member's
            self.close()
            return
        if skip:
            self._skip = skip
            self._skip_max = max(skip)

    async def _abort_open(self, txn: PartitionTransactions, *, failed: bool = True) -> None:
        """The lane closes with its transaction open: a record failed or was
        cancelled (its records run again under the partition's next owner), or
        nothing completed in it (``failed=False``)."""
        try:
            await txn.abort(failed=failed)
        except FENCED as exc:
            self._fenced(exc)
        except Exception as exc:
            log.warning("aborting the transaction of %s failed: %r", self.tp, exc)

    def _fenced(self, exc: BaseException) -> None:
        assert self.txn is not None
        self.txn.fenced(exc)
        self.close()
        self._owner.lane_fenced(self)
