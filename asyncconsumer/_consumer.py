"""``Consumer``: ``async for msg in consumer`` with at-least-once commits."""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from aiokafka.errors import ConsumerStoppedError as AioConsumerStoppedError
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from ._codecs import CodecSpec, resolve_codec
from ._config import REFUSED_COMMIT_TIMEOUT, ConsumerSettings, OffsetReset
from ._errors import (
    AuthenticationError,
    CommitError,
    ConfigurationError,
    ConsumerStoppedError,
    DeserializationError,
)
from ._message import Message, make_decoder
from ._runtime._offsets import OffsetBook, PartitionOffsets
from ._runtime._rebalance import RebalanceAdapter, RebalanceHook
from ._security import Security
from ._seeking import SeekTarget, Timestamp, lookup_offsets, timestamp_ms
from ._transport import ConsumerClient

if TYPE_CHECKING:
    from ._message import Record

__all__ = ["Consumer"]

log = logging.getLogger("asyncconsumer")

_EMPTY: list[Any] = []
POLL_RECORDS = 1000  # records per poll, unless max_poll_records says otherwise


class Consumer:
    """Iterate over records with ``async for``; commit what the loop has processed.

    Give exactly one of: topic names, ``pattern=`` (a regex, matched from the
    start of topic names) or ``partitions=`` (manual assignment, no group
    membership; ``group_id`` then only names where offsets are committed).

    A yielded record counts as processed when the loop asks for the next one,
    or on :meth:`commit`. Processed offsets are committed every
    ``commit_interval`` seconds, before partitions are revoked, and on close.
    Leaving ``async with`` normally counts the last record as processed;
    leaving it by an exception does not.

    ``bootstrap_servers="memory://<name>"`` consumes from the
    :class:`~asyncconsumer.testing.MemoryKafka` of that name (tests).

    A record that cannot be decoded raises :class:`~asyncconsumer.DeserializationError`
    from the loop and stays the partition's next record (it is not skipped): to
    go past it, ``consumer.seek(TopicPartition(e.topic, e.partition), e.offset + 1)``.

    ``security`` (a :class:`~asyncconsumer.Security`) secures the connections, or
    aiokafka's own security options in ``kafka_options`` do (not both). A broker
    that refuses the credentials or the TLS handshake raises
    :class:`~asyncconsumer.AuthenticationError` from :meth:`start` (or from the loop,
    when it happens on a later connection) instead of being retried.
    """

    def __init__(
        self,
        *topics: str,
        bootstrap_servers: str | list[str],
        group_id: str | None = None,
        pattern: str | re.Pattern[str] | None = None,
        partitions: Iterable[TopicPartition] | None = None,
        key_codec: CodecSpec = "bytes",
        value_codec: CodecSpec = "bytes",
        auto_offset_reset: OffsetReset = "latest",
        commit_interval: float = 5.0,
        drain_timeout: float | None = None,
        on_assign: RebalanceHook | None = None,
        on_revoke: RebalanceHook | None = None,
        security: Security | None = None,
        **kafka_options: Any,
    ) -> None:
        modes = [
            name
            for name, given in (
                ("topics", bool(topics)),
                ("pattern=", pattern is not None),
                ("partitions=", partitions is not None),
            )
            if given
        ]
        if len(modes) != 1:
            raise ConfigurationError(
                "give topic names, pattern= or partitions=: exactly one of them"
                + (f" (got {' and '.join(modes)})" if modes else "")
            )
        self._topics = list(topics)
        self._pattern = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        self._partitions = sorted(partitions) if partitions is not None else None
        if self._partitions is not None:
            if not self._partitions or not all(
                isinstance(tp, TopicPartition) for tp in self._partitions
            ):
                raise ConfigurationError("partitions= needs a non-empty list of TopicPartition")
            if on_assign is not None or on_revoke is not None:
                raise ConfigurationError(
                    "on_assign/on_revoke need group membership; partitions= assigns by hand"
                )
        elif not group_id:
            raise ConfigurationError(
                "subscribing to topics or a pattern needs a group_id "
                "(or use partitions=[TopicPartition(...)] to consume without a group)"
            )
        if self._pattern is not None:
            try:
                re.compile(self._pattern)
            except re.error as exc:
                raise ConfigurationError(f"invalid pattern {self._pattern!r}: {exc}") from exc
        for hook in (on_assign, on_revoke):
            if hook is not None and not inspect.iscoroutinefunction(hook):
                raise ConfigurationError(f"rebalance hook {hook!r} must be an async def")
        self.settings = ConsumerSettings(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            commit_interval=commit_interval,
            drain_timeout=drain_timeout,
            kafka_options=kafka_options,
            security=security,
        )
        self._decode = make_decoder(
            resolve_codec(key_codec, what="key_codec"),
            resolve_codec(value_codec, what="value_codec"),
        )
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._client: ConsumerClient | None = None
        self._book = OffsetBook(self.settings.commit_timeout)
        self._pending: deque[tuple[TopicPartition, list[Record]]] = deque()
        self._batch: list[Record] = _EMPTY
        self._batch_tp: TopicPartition | None = None
        self._batch_offsets = PartitionOffsets()
        self._index = 0
        self._last: Record | None = None  # yielded, not yet processed
        self._last_offsets = self._batch_offsets
        # handed out by getmany(), not yet processed: (offsets, next offset, partition)
        self._held: list[tuple[PartitionOffsets, int, TopicPartition]] = []
        self._error: BaseException | None = None
        self._gate: anyio.Event | None = None  # a revoke waits for the loop body
        self._resume: anyio.Event | None = None
        self._next_commit = 0.0
        # Records per poll: what aiokafka decodes at once. Without a bound a poll
        # decoded all it had buffered (up to fetch_max_bytes: 80,000 small records in
        # one call), and the next fetch went out only once they were all consumed.
        self._poll_records: int = kafka_options.get("max_poll_records") or POLL_RECORDS
        self._closed = False  # stop() began: iteration ends
        self._client_stopped = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect, then join the group (or take the given partitions)."""
        if self._client is not None:
            raise RuntimeError("this consumer was already started")
        client = self._client = self.settings.build_client()
        try:
            await client.start()
        except BaseException:
            self._closed = self._client_stopped = True
            await client.stop()
            raise
        client.on_refused(self._fail)  # a later connection refused for good
        if self._partitions is not None:
            client.assign(self._partitions)
            for tp in self._partitions:
                self._book.track(tp)
        else:
            client.subscribe(
                topics=self._topics,
                pattern=self._pattern,
                listener=RebalanceAdapter(self._on_revoked, self._on_assigned, self._fail),
            )
        self._next_commit = time.monotonic() + self.settings.commit_interval

    async def stop(self, *, commit_last: bool = True) -> None:
        """Commit processed offsets, run ``on_revoke``, and leave the group.

        ``commit_last=False`` leaves the record last yielded uncommitted (it was
        not processed); ``async with`` passes that when its body raised.
        """
        if self._closed or self._client is None:
            return
        self._closed = True
        client = self._client
        self._batch, self._index, self._batch_tp = _EMPTY, 0, None
        self._pending.clear()
        with anyio.CancelScope(shield=True):
            try:
                if commit_last:
                    self._mark_last_processed()
                if self.settings.group_id is not None:
                    # Refused for good: no new connection; do not wait commit_timeout.
                    refused = isinstance(self._error, AuthenticationError)
                    try:
                        with anyio.fail_after(REFUSED_COMMIT_TIMEOUT if refused else None):
                            await self._book.commit(client)
                    except TimeoutError:
                        log.error("commit on close impossible: the cluster refuses the connection")
                    except CommitError as exc:
                        log.error(
                            "commit on close failed, records will be delivered again: %s", exc
                        )
                assigned = sorted(client.assignment())
                if self._on_revoke is not None and assigned:
                    await self._on_revoke(assigned)
            finally:
                self._client_stopped = True
                await client.stop()

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(commit_last=exc_type is None)

    # -- iteration -----------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Message[Any]:
        last = self._last
        if last is not None:
            self._last = None
            self._last_offsets.completed = last.offset + 1
        elif self._held:
            self._mark_last_processed()
        if self._gate is not None or self._error is not None:
            await self._wait_rebalance()
        batch = self._batch
        i = self._index
        if i >= len(batch):
            fetched = await self._next_batch()
            assert fetched is not None  # no deadline: it waits
            batch, i = fetched, 0
        record = batch[i]
        decode = self._decode
        # raises DeserializationError; the record stays next
        msg = record if decode is None else decode(record)
        self._index = i + 1
        self._last = record
        return msg

    async def getmany(self, *, max_records: int = 500, max_wait: float = 1.0) -> list[Message[Any]]:
        """Up to ``max_records`` records, each partition's in offset order; an empty
        list when none arrived within ``max_wait`` seconds.

        The records count as processed at the next ``getmany()``, the next
        ``async for`` step, or :meth:`commit`. A record that cannot be decoded
        ends the list before it; the next call raises
        :class:`~asyncconsumer.DeserializationError` for it (it is not skipped).
        """
        if not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records must be an int >= 1, not {max_records!r}")
        self._mark_last_processed()
        if self._gate is not None or self._error is not None:
            await self._wait_rebalance()
        deadline = time.monotonic() + max_wait
        out: list[Message[Any]] = []
        while len(out) < max_records:
            batch, start = self._batch, self._index
            if start >= len(batch):
                if out and not self._pending:
                    break  # return what is here rather than wait for more
                try:
                    if await self._next_batch(deadline) is None:
                        break  # timed out
                except StopAsyncIteration:
                    raise ConsumerStoppedError("the consumer was stopped") from None
                continue
            end = min(len(batch), start + max_records - len(out))
            taken = start
            decode = self._decode
            if decode is None:
                out.extend(batch[start:end])
                taken = end
            try:
                while taken < end:
                    out.append(decode(batch[taken]))  # type: ignore[misc]
                    taken += 1
            except DeserializationError:
                if not out:
                    raise  # the bad record is next: nothing handed out
            finally:
                if taken > start:
                    self._index = taken
                    assert self._batch_tp is not None
                    self._held.append(
                        (self._last_offsets, batch[taken - 1].offset + 1, self._batch_tp)
                    )
            if taken < end:
                break  # stopped before an undecodable record
        return out

    async def _next_batch(self, deadline: float | None = None) -> list[Record] | None:
        """Make the next fetched batch current; wait for one (until ``deadline``, a
        ``time.monotonic()`` value, then return ``None``)."""
        client = self._client
        if client is None:
            raise ConsumerStoppedError(
                "the consumer was not started: use `async with Consumer(...)`"
            )
        while True:
            if self._closed:
                raise StopAsyncIteration  # stop() was called: the loop ends
            if self._error is not None or self._gate is not None:
                await self._wait_rebalance()
            if self._pending:
                tp, records = self._pending.popleft()
                offsets = self._book.get(tp)
                if offsets is None:
                    continue
                self._batch, self._batch_tp, self._index = records, tp, 0
                self._last_offsets = offsets
                return records
            if self.settings.group_id is not None and time.monotonic() >= self._next_commit:
                await self._commit_quietly()
            wait_ms = 1000
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait_ms = min(wait_ms, int(remaining * 1000) + 1)
            try:
                batches = await client.getmany(timeout_ms=wait_ms, max_records=self._poll_records)
            except AioConsumerStoppedError:
                raise StopAsyncIteration from None  # stopped from another task
            for tp, records in batches.items():
                if records:
                    self._book.track(tp)
                    self._pending.append((tp, records))

    # -- commits ---------------------------------------------------------------------

    async def commit(self) -> dict[TopicPartition, int]:
        """Count the record last yielded as processed and commit every processed offset.

        Returns the offsets committed (the next offset to read, per partition).
        Raises :class:`~asyncconsumer.CommitError` if the broker refused.
        """
        client = self._require_client()
        if self.settings.group_id is None:
            raise ConfigurationError("commit() needs a group_id to commit offsets to")
        self._mark_last_processed()
        return await self._book.commit(client)

    async def _commit_quietly(self) -> None:
        self._next_commit = time.monotonic() + self.settings.commit_interval
        try:
            await self._book.commit(self._require_client())
        except CommitError as exc:
            log.warning("%s; retrying at the next interval", exc)

    def _mark_last_processed(self) -> None:
        last = self._last
        if last is not None:
            self._last = None
            self._last_offsets.completed = last.offset + 1
        if self._held:
            for offsets, next_offset, _ in self._held:
                offsets.completed = next_offset
            self._held.clear()

    # -- positions -----------------------------------------------------------------

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next; that offset is also what gets
        committed for it until a later record is processed."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, not {offset!r}")
        client = self._require_client()
        try:
            client.seek(partition, offset)
        except IllegalStateError as exc:
            raise ValueError(f"{partition} is not assigned to this consumer") from exc
        self._drop_buffered([partition])
        self._forget_last([partition])
        self._book.track(partition).completed = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Read the given (default: all assigned) partitions from their first
        offset, as :meth:`seek` does (the offset is looked up first)."""
        await self._seek_to("beginning", partitions)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Read the given (default: all assigned) partitions from their end, as
        :meth:`seek` does: the end offset becomes what is committed for them."""
        await self._seek_to("end", partitions)

    async def seek_to_time(self, when: Timestamp, *partitions: TopicPartition) -> None:
        """Read the given (default: all assigned) partitions from their first record
        whose timestamp is at or after ``when`` (a timezone-aware ``datetime`` or
        epoch milliseconds), as :meth:`seek` does; a partition with no such record
        is read from its end."""
        await self._seek_to(timestamp_ms(when), partitions)

    async def _seek_to(self, target: SeekTarget, partitions: tuple[TopicPartition, ...]) -> None:
        tps = list(partitions) or sorted(self.assignment())
        offsets = await lookup_offsets(self._require_client(), tps, target)
        for tp in tps:
            self.seek(tp, offsets[tp])

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop yielding records of these partitions until :meth:`resume`."""
        client = self._require_client()
        client.pause(*partitions)
        # Records already fetched go back: the position returns to the first
        # record not yielded, so resume() continues exactly there.
        for tp, first in self._drop_buffered(partitions).items():
            client.seek(tp, first)

    def resume(self, *partitions: TopicPartition) -> None:
        """Yield records of these paused partitions again."""
        self._require_client().resume(*partitions)

    def paused(self) -> frozenset[TopicPartition]:
        return frozenset(self._require_client().paused())

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions currently assigned to this consumer."""
        return frozenset(self._require_client().assignment())

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of ``partition`` as the broker has it."""
        return await self._require_client().committed(partition)

    async def position(self, partition: TopicPartition) -> int:
        """The offset of the next record the client will fetch (not yield) for ``partition``."""
        return await self._require_client().position(partition)

    def highwater(self, partition: TopicPartition) -> int | None:
        """The partition's end offset as of the last fetch response (``None`` before one)."""
        return self._require_client().highwater(partition)

    # -- rebalance ---------------------------------------------------------------------

    async def _on_assigned(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._book.track(tp)
        if self._on_assign is not None and tps and not self._closed:
            await self._on_assign(tps)

    async def _on_revoked(self, tps: list[TopicPartition]) -> None:
        if self._closed or not tps:
            return
        gate = self._gate = anyio.Event()
        resume = self._resume = anyio.Event()
        try:
            if self._last is not None or self._held:
                # The loop body holds records: give it the time to finish.
                with anyio.move_on_after(self.settings.rebalance_drain_timeout):
                    await gate.wait()
            self._drop_buffered(tps)
            self._forget_last(tps)  # not processed in time: the next owner gets it again
            try:
                await self._book.commit(self._require_client(), tps, revoking=True)
            except CommitError as exc:
                log.warning("commit before revoke failed, the next owner will redo: %s", exc)
            self._book.forget(tps)
            if self._on_revoke is not None:
                await self._on_revoke(tps)
        finally:
            self._gate = self._resume = None
            resume.set()

    async def _wait_rebalance(self) -> None:
        gate, resume = self._gate, self._resume
        if gate is not None and resume is not None:
            gate.set()
            await resume.wait()
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _drop_buffered(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget fetched, not yielded records of ``tps``; return the first such offset."""
        drop = set(tps)
        first: dict[TopicPartition, int] = {}
        if self._batch_tp in drop:
            assert self._batch_tp is not None
            if self._index < len(self._batch):
                first[self._batch_tp] = self._batch[self._index].offset
            self._batch, self._index, self._batch_tp = _EMPTY, 0, None
        kept: deque[tuple[TopicPartition, list[Record]]] = deque()
        for tp, records in self._pending:
            if tp in drop:
                first.setdefault(tp, records[0].offset)
            else:
                kept.append((tp, records))
        self._pending = kept
        return first

    def _forget_last(self, tps: Iterable[TopicPartition]) -> None:
        """The record the loop body holds no longer counts once its partition was
        sought elsewhere or revoked."""
        drop = set(tps)
        last = self._last
        if last is not None and TopicPartition(last.topic, last.partition) in drop:
            self._last = None
        if self._held:
            self._held = [held for held in self._held if held[2] not in drop]

    def _require_client(self) -> ConsumerClient:
        if self._client is None or self._client_stopped:
            raise ConsumerStoppedError(
                "the consumer is not running: use `async with Consumer(...)`"
            )
        return self._client
