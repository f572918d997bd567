"""Kafka transactions for ``delivery="exactly_once"`` handlers (consume-transform-produce).

What a partition's records produce (``publish_to``, dead letters, sends through the
app's producer inside the handler) and the partition's next offset are committed in
one Kafka transaction, so a ``read_committed`` reader sees each output once whatever
crashes or rebalances happen. One transaction spans many records: it commits when it
holds ``max_records`` records, when ``interval`` (the app's ``commit_interval``) has
passed since it began, once the partition has had nothing to run for
:data:`IDLE_COMMIT_DELAY` (nothing would join it: its outputs stay invisible to
``read_committed`` readers until it commits), and before the partition is revoked or
the app stops. So under a steady stream transactions grow to ``max_records`` or
``interval``, and a partition that catches up commits at once.

Zombie fencing: one transactional producer per input partition, with the transactional
id ``asyncconsumer.{group}.{topic}.{partition}``. This is the model before KIP-447:
aiokafka implements only version 0 of ``TxnOffsetCommit``, which carries no consumer
group generation, so the broker cannot fence by generation. Starting the producer
(``InitProducerId``) bumps the id's epoch: the partition's previous owner, if it still
runs (frozen past its session timeout, then resumed), can no longer send or commit, and
its open transaction is aborted. The new owner starts its producer *before* it reads
the partition's committed offset, so it resumes after every transaction its
predecessor committed and redoes every one that was aborted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import anyio
from aiokafka.errors import (
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata

from .._producer import Producer
from ._pipeline import TopicCounters, abandon

if TYPE_CHECKING:
    from aiokafka.structs import TopicPartition

    from .._transport import ProducerClient
    from ._pipeline import Acknowledgement

__all__ = [
    "FENCED",
    "IDLE_COMMIT_DELAY",
    "MAX_TRANSACTION_FAILURES",
    "PartitionTransactions",
    "WorkerTransaction",
    "caused_by",
    "transactional_id",
]

log = logging.getLogger("asyncconsumer")

# The producer's epoch moved on: another member owns the partition now.
FENCED = (ProducerFenced, InvalidProducerEpoch, TransactionalIdAuthorizationFailed)

DEFAULT_MAX_RECORDS = 10_000
# Seconds a partition with nothing to run waits for records before it commits its open
# transaction (Kafka Streams commits every 100 ms under exactly-once, for the same
# reason: the outputs are invisible until then). Short gaps between fetches do not
# cut a transaction; an idle partition does not wait out ``commit_interval``.
IDLE_COMMIT_DELAY = 0.1
# A transaction that aborts this many times in a row from the same offset stops the
# app with its error (a record whose output the broker refuses every time).
MAX_TRANSACTION_FAILURES = 3
RESTART_STOP_TIMEOUT = 5.0  # seconds a failed producer gets to close


def caused_by(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> bool:
    """Whether ``exc`` or its cause is a ``kind`` (a dead letter that could not be
    sent raises ``DeadLetterError`` from the producer's error)."""
    return isinstance(exc, kind) or isinstance(exc.__cause__, kind)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark the future's error retrieved: a refused output is the error to raise."""
    if not future.cancelled():
        future.exception()


def transactional_id(group_id: str, tp: TopicPartition) -> str:
    return f"asyncconsumer.{group_id}.{tp.topic}.{tp.partition}"


class PartitionTransactions:
    """The transactions of one input partition, run by its lane."""

    __slots__ = (
        "_base",
        "attempt_sends",
        "began",
        "counters",
        "failed_at",
        "failures",
        "first",
        "gave_up",
        "group_id",
        "interval",
        "max_records",
        "metadata",
        "next_offset",
        "open",
        "outcomes",
        "pending",
        "producer",
        "records",
        "redo_failed",
        "refused_output",
        "tp",
    )

    def __init__(
        self,
        tp: TopicPartition,
        base: Producer,
        group_id: str,
        counters: TopicCounters,
        *,
        interval: float,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.tp = tp
        self.group_id = group_id
        self._base = base
        self.producer = Producer.transactional(base, transactional_id(group_id, tp))
        self.counters = counters
        self.interval = interval
        self.max_records = max_records
        self.open = False
        self.began = 0.0
        self.records = 0
        self.first = -1  # the offset of the transaction's first record
        self.next_offset = -1  # the offset after its last completed record
        # The commit metadata that goes with it: under key / none ordering, the
        # records completed above ``next_offset`` (see _offsets.encode_completed).
        self.metadata = ""
        # What the transaction's records published: aiokafka commits a transaction
        # even if a record of it was refused, so the commit checks these first.
        self.pending: list[Acknowledgement] = []
        # Whether the broker refused one of them: then aiokafka's idempotent producer
        # holds a sequence number the broker never wrote (see :meth:`recover`).
        self.refused_output = False
        # What became of its records (handled, failed, skipped, dead-lettered): added
        # to ``counters`` when it commits; an abort drops them, and the records run
        # again and are counted then.
        self.outcomes = TopicCounters()
        self.failures = 0  # aborts in a row of a transaction beginning at ``first``
        # A failed attempt that sent into the transaction is not retried in place
        # (the retry would send again, and both would commit): with ``redo_failed``
        # (a lane that runs one record or batch at a time) the lane aborts and runs
        # the transaction's records again. ``attempt_sends``: what the attempt
        # running now sent (the lane resets it); ``gave_up``: the error of a record
        # out of attempts whose failure policy applies after the abort.
        self.redo_failed = False
        self.attempt_sends = 0
        self.gave_up: Exception | None = None
        # Records whose failed attempt aborted a transaction: offset -> (attempts so
        # far, the error to give up with, None to retry). Kept across rewinds (a
        # later abort runs them again) until a commit passes them.
        self.failed_at: dict[int, tuple[int, Exception | None]] = {}

    @property
    def client(self) -> ProducerClient:
        return self.producer.client

    def sent(self, future: Acknowledgement) -> None:
        """A record the handler sent through the app's producer (routed here): the
        commit checks its acknowledgement too."""
        self.pending.append(future)
        self.attempt_sends += 1

    def published(self, count: int) -> None:
        self.attempt_sends += count

    def failed_attempt(self, exc: Exception, *, retry: bool) -> bool:
        if not (self.redo_failed and self.attempt_sends):
            return False
        self.gave_up = None if retry else exc
        return True

    async def start(self) -> None:
        """``InitProducerId``: fences the partition's previous owner (see the module)."""
        await self.producer.start()

    async def restart(self) -> None:
        """Replace the producer by a new one with the same transactional id, after an
        error it cannot recover from (aiokafka's idempotent producer can end in
        ``OutOfOrderSequenceNumber`` after retrying a send, a fatal state in which it
        cannot even abort). Starting the new one aborts the open transaction."""
        self.open = False
        old = self.producer
        self.producer = Producer.transactional(self._base, transactional_id(self.group_id, self.tp))
        with anyio.move_on_after(RESTART_STOP_TIMEOUT):
            try:
                await old.stop()
            except Exception as exc:
                log.debug("stopping the failed transactional producer of %s: %r", self.tp, exc)
        await self.producer.start()

    async def close(self) -> None:
        """Stop the producer (an open transaction is aborted by the broker, or by the
        next owner's start)."""
        self.open = False
        await self.producer.stop()

    async def begin(self, offset: int) -> None:
        if offset != self.first:
            self.failures = 0
        await self.client.begin_transaction()
        self.open = True
        self.began = time.monotonic()
        self.records = 0
        self.outcomes = TopicCounters()  # (what an aborted one counted is dropped)
        self.first = offset

    def completed(self, next_offset: int, count: int, sent: list[Acknowledgement]) -> bool:
        """Records up to ``next_offset`` are done, having published ``sent``; return
        whether to commit now."""
        if sent:
            self.pending.extend(sent)
            sent.clear()
        self.next_offset = next_offset
        self.records += count
        return self.records >= self.max_records or time.monotonic() - self.began >= self.interval

    def remaining(self) -> float:
        """Seconds until the open transaction is due."""
        return max(0.0, self.began + self.interval - time.monotonic())

    def idle_remaining(self) -> float:
        """Seconds a partition with nothing to run waits before it commits."""
        return min(IDLE_COMMIT_DELAY, self.remaining())

    async def commit(self) -> int:
        """Commit the partition's next offset and every output in one transaction;
        return that offset. Raises what the broker answered (the caller aborts)."""
        client = self.client
        offset = self.next_offset
        pending, self.pending = self.pending, []
        offsets = client.send_offsets_to_transaction(
            {self.tp: OffsetAndMetadata(offset, self.metadata)}, self.group_id
        )
        if pending:
            # The offsets join the transaction (AddOffsetsToTxn, TxnOffsetCommit)
            # while the outputs are acknowledged: two round trips less per commit.
            # Only the commit itself must wait for the acknowledgements.
            adding = asyncio.ensure_future(offsets)
            adding.add_done_callback(_retrieved)
            await asyncio.wait((adding, *pending))
            for future in pending:
                error = None if future.cancelled() else future.exception()
                if error is not None:
                    self.refused_output = True
                    abandon(pending)  # the others' errors must not go unretrieved
                    raise error
            await adding
        else:
            await offsets
        await client.commit_transaction()
        self.open = False
        self.failures = 0
        self._count_outcomes()
        if self.failed_at:
            self.failed_at = {o: f for o, f in self.failed_at.items() if o >= offset}
        self.counters.transactions += 1
        return offset

    def _count_outcomes(self) -> None:
        outcomes, counters = self.outcomes, self.counters
        counters.handled += outcomes.handled
        counters.failed += outcomes.failed
        counters.skipped += outcomes.skipped
        counters.dead_lettered += outcomes.dead_lettered
        self.outcomes = TopicCounters()

    async def abort(self, *, failed: bool = True) -> None:
        """Abort the open transaction: its outputs vanish, its offset stays uncommitted.
        ``failed=False``: a transaction with no completed record, closed with the lane
        (not counted as an aborted transaction)."""
        self.open = False
        if failed:
            self.failures += 1
            self.counters.aborted_transactions += 1
        abandon(self.pending)
        await self.client.abort_transaction()

    async def abort_attempt(self) -> None:
        """Abort the open transaction because an attempt that sent into it failed
        (its records run again; not counted among the aborts in a row that stop the
        app: the retry policy bounds these)."""
        self.open = False
        self.counters.aborted_transactions += 1
        abandon(self.pending)
        # What the attempts sent is delivered first, as before a commit: the abort
        # does not race batches still lingering or in flight.
        await self.client.flush()
        await self.client.abort_transaction()

    def fenced(self, exc: BaseException) -> None:
        """Another member's producer fenced this one: the partition is not ours."""
        log.error(
            "%s[%d]: this member's transactional producer was fenced (%r): another member "
            "owns the partition now; its open transaction is aborted and the member rejoins",
            self.tp.topic,
            self.tp.partition,
            exc,
        )
        self.open = False

    async def recover(self, exc: Exception, *, replace: bool = True) -> bool:
        """The transaction could not commit (``exc``): abort it, and replace its producer
        when that cannot even abort or when an output was refused; return whether the
        producer was replaced. Raises ``exc`` once the transaction from ``first``
        aborted :data:`MAX_TRANSACTION_FAILURES` times in a row, and a :data:`FENCED`
        error if another member's producer fenced this one. ``replace=False``: the
        producer is not replaced (an abort that fails raises its error): when it may
        have been fenced without saying so, a new one would fence the partition's new
        owner.

        A refused output (``NotLeaderForPartition`` from a topic whose leader is not
        elected yet, a timeout) leaves aiokafka's idempotent producer with a sequence
        number the broker never wrote: the abort succeeds, and every later transaction
        that sends to that partition fails with ``OutOfOrderSequenceNumber``. Java's
        producer bumps its epoch on such an abort (KIP-360); aiokafka does not, so the
        producer is replaced: the new one starts from sequence 0 with a new epoch."""
        log.warning(
            "the transaction of %s[%d] from offset %d failed and was aborted; its records "
            "run again: %r",
            self.tp.topic,
            self.tp.partition,
            self.first,
            exc,
        )
        refused = self.refused_output or caused_by(exc, OutOfOrderSequenceNumber)
        self.refused_output = False
        restarted = False
        try:
            await self.abort()
        except FENCED:
            raise
        except Exception as abort_error:
            if not replace:
                raise
            log.warning(
                "the transactional producer of %s[%d] cannot abort (%r): starting a new one",
                self.tp.topic,
                self.tp.partition,
                abort_error,
            )
            await self.restart()
            restarted = True
        if self.failures >= MAX_TRANSACTION_FAILURES:
            exc.add_note(
                f"asyncconsumer: the transaction from offset {self.first} aborted "
                f"{self.failures} times in a row"
            )
            raise exc
        if refused and replace and not restarted:
            log.warning(
                "an output of the transaction of %s[%d] was refused (%r): starting a new "
                "transactional producer, whose sequence numbers start afresh",
                self.tp.topic,
                self.tp.partition,
                exc,
            )
            await self.restart()
            restarted = True
        return restarted


class WorkerTransaction:
    """A pooled worker's view of its partition's transaction (key / none ordering):
    the partition's records run concurrently, so what an attempt sent into the
    transaction is counted per worker, for :meth:`Processor.failed
    <asyncconsumer._runtime._pipeline.Processor.failed>` to tell whether the attempt
    can be retried in place (it sent nothing) or the transaction must abort."""

    __slots__ = ("attempt_sends", "gave_up", "txn")

    def __init__(self, txn: PartitionTransactions) -> None:
        self.txn = txn
        self.attempt_sends = 0
        self.gave_up: Exception | None = None

    @property
    def client(self) -> ProducerClient:
        return self.txn.producer.client

    @property
    def outcomes(self) -> TopicCounters:
        return self.txn.outcomes

    def sent(self, future: Acknowledgement) -> None:
        self.txn.pending.append(future)
        self.attempt_sends += 1

    def published(self, count: int) -> None:
        self.attempt_sends += count

    def failed_attempt(self, exc: Exception, *, retry: bool) -> bool:
        if not self.attempt_sends:
            return False
        self.gave_up = None if retry else exc
        return True
