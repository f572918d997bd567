"""The engine behind :class:`~asyncconsumer.ConsumerApp`.

One anyio task group owns everything that runs::

    Engine.run
    └── task group
        ├── fetch loop      getmany -> lanes; pauses a partition whose lane is full
        ├── commit loop     every commit_interval: commit completed offsets
        ├── liveness        event-loop lag and fetch-loop watch
        ├── lanes           one worker per assigned partition (see _lanes)
        └── worker pools    per key/none-ordered handler: workers + retry timer

What a lane does with a record (decode, middleware, handler, publish, retries,
dead-letter / skip / stop) is the handler's :class:`~._pipeline.Processor`.

The engine talks to Kafka through a :class:`~asyncconsumer._transport.ConsumerClient`
(aiokafka's, or a MemoryKafka's in tests). Rebalances arrive from the client's
coordinator through :class:`RebalanceAdapter`:

- revoke: close the revoked lanes (buffered records dropped), wait for their
  in-flight records (``drain_timeout``), cancel what is still running, commit
  their completed offsets, then run the user's ``on_revoke`` hooks;
- assign: create lanes, run the user's ``on_assign`` hooks (which may seek),
  then start the lanes. Records the client hands out for a newly assigned
  partition before its lane exists are not dropped: the partition is sought back
  to them and paused until the lane exists.

Stop (``stop()``, an error, or cancellation of ``run``): stop fetching, drain
every lane within ``shutdown_timeout``, cancel the rest, commit, run
``on_revoke``, then close the client, which leaves the group. A lock keeps
rebalance handling, commits and the stop sequence from interleaving.

Every commit goes through :meth:`Engine._commit`, which reports it (offsets, or
the error) to the ``on_commit`` hooks. ``at_most_once`` handlers' records are
committed by the fetch loop before their lane gets them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from .._config import REFUSED_COMMIT_TIMEOUT, ConsumerSettings
from .._errors import AsyncConsumerError, AuthenticationError, CommitError, ConsumerStoppedError
from .._offset_store import OffsetStore
from .._seeking import SeekTarget, lookup_offsets
from .._statistics import Statistics
from .._transport import ConsumerClient, Reachability, Transport
from ._concurrent import KeyedLane, WorkerPool
from ._keyed_txn import TransactionalKeyedLane
from ._lanes import DEFAULT_WINDOW, BatchLane, BufferBound, Lane, LaneOwner, PartitionLane
from ._liveness import LivenessMonitor
from ._observe import Observers
from ._offsets import OffsetBook, decode_completed
from ._pipeline import CounterMap, Middleware, Processor, compose
from ._rebalance import RebalanceAdapter, RebalanceHook
from ._report import describe_start, describe_stop, totals, warn_missing_topics
from ._snapshot import snapshot
from ._transactions import PartitionTransactions

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from .._handlers import HandlerRegistry, HandlerSpec
    from .._message import Record
    from .._producer import Producer

__all__ = ["CommitHook", "Engine"]

CommitHook: TypeAlias = Callable[[dict[TopicPartition, int], CommitError | None], Awaitable[None]]

log = logging.getLogger("asyncconsumer")


class Engine(LaneOwner):
    def __init__(
        self,
        settings: ConsumerSettings,
        registry: HandlerRegistry,
        on_assign: Sequence[RebalanceHook],
        on_revoke: Sequence[RebalanceHook],
        *,
        max_buffered_records: int,
        max_buffered_bytes: int | None = None,
        completion_window: int = DEFAULT_WINDOW,
        start_at: int | None = None,
        offset_store: OffsetStore[Any] | None = None,
        poll_timeout: float = 0.5,
        middleware: Sequence[Middleware] = (),
        on_commit: Sequence[CommitHook] = (),
        producer: Producer | None = None,
        counters: CounterMap | None = None,
        observers: Observers | None = None,
        transport: Transport | None = None,
        backoff_scale: float = 1.0,
    ) -> None:
        self.settings = settings
        self._transport = transport  # None: the one bootstrap_servers selects
        self._backoff_scale = backoff_scale  # retry backoffs x this (TestClient: 0)
        self._registry = registry
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_commit = on_commit
        self._start_at = start_at  # epoch ms: seek there on the first assignment
        self._offset_store = offset_store  # wins over the group's committed offsets
        self._middleware = middleware
        self._producer = producer
        # Per-topic totals, kept across rebalances (the app keeps them across runs).
        self.counters = counters if counters is not None else CounterMap()
        self._processors: dict[str, Processor] = {}  # handler name -> its processor
        self._bound = BufferBound(max_buffered_records, max_buffered_bytes, completion_window)
        self._poll_ms = int(poll_timeout * 1000)
        # One poll hands a partition at most this many records, so a lane holds
        # at most twice its bound; what aiokafka prefetched beyond that is
        # dropped when the partition pauses (and fetched again on resume).
        self._poll_records: int = (
            settings.kafka_options.get("max_poll_records") or max_buffered_records
        )
        self.client: ConsumerClient | None = None
        self.failure: BaseException | None = None
        self._lanes: dict[TopicPartition, Lane] = {}
        self._draining: set[Lane] = set()  # lanes a revoke or the stop is draining
        self._pools: dict[str, WorkerPool] = {}  # handler name -> workers (key/none ordering)
        self._book = OffsetBook(settings.commit_timeout)
        self._lock = anyio.Lock()
        self._stop_requested = anyio.Event()
        self._closing = False
        self._aborted = False
        # For the stop line: the drain's duration and the offsets committed last.
        self._drain_time = 0.0
        self._final_offsets: dict[TopicPartition, int] = {}
        self._tg: TaskGroup | None = None
        self._fetch_scope = anyio.CancelScope()
        self._poll_scope: anyio.CancelScope | None = None
        self._full: set[TopicPartition] = set()  # lanes at their bound: not polled
        self._client_paused: set[TopicPartition] = set()
        # Assigned partitions whose records reached the fetch loop before their lane
        # existed: sought back to those records and paused until _on_assigned.
        self._awaiting_lane: set[TopicPartition] = set()
        # Whether the member's requests get answers (health: the cluster check).
        self.reachability = Reachability()
        self.liveness = LivenessMonitor(
            self._describe_running, unreachable_for=self.reachability.unreachable_for
        )
        # Rebalances: completed ones, and when the one in progress began (the
        # first one is the initial join).
        self.rebalances = 0
        self._rebalance_since: float | None = time.monotonic()
        # Commit and rebalance events, for metrics (the app's, kept across runs).
        self.observers = observers if observers is not None else Observers()

    # -- public surface used by ConsumerApp ---------------------------------

    def request_stop(self) -> None:
        self._stop_requested.set()

    def abort(self) -> None:
        """Stop now: cancel in-flight handlers without waiting (they are not committed)."""
        self._aborted = True
        self._stop_requested.set()
        # Also the lanes a revoke in progress took out of the assignment.
        for lane in [*self._lanes.values(), *self._draining]:
            lane.close()
            lane.cancel()

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._lanes)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        lane = self._assigned_lane(tp)
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, not {offset!r}")
        self._client().seek(tp, offset)
        lane.seek(offset)
        self._unpause(lane)

    async def seek_to(self, target: SeekTarget, tps: Sequence[TopicPartition]) -> None:
        """Look the offsets up (beginning, end or a time), then seek like :meth:`seek`:
        one mechanism for all seeks (the committable offset moves, a record running
        meanwhile cannot undo it). ``tps`` empty: every assigned partition."""
        lanes = [self._assigned_lane(tp) for tp in tps] if tps else list(self._lanes.values())
        offsets = await lookup_offsets(self._client(), [lane.tp for lane in lanes], target)
        for lane in lanes:
            if self._lanes.get(lane.tp) is lane:  # still assigned after the look-up
                self.seek(lane.tp, offsets[lane.tp])

    async def committed(self, tp: TopicPartition) -> int | None:
        offset: int | None = await self._client().committed(tp)
        return offset

    def statistics(self) -> Statistics:
        since = self._rebalance_since
        return snapshot(
            self._lanes,
            self.client,
            self.counters,
            self.liveness,
            self.reachability,
            rebalances=self.rebalances,
            rebalance_age=0.0 if since is None else time.monotonic() - since,
        )

    def _rebalance_began(self) -> None:
        if self._rebalance_since is None:
            self._rebalance_since = time.monotonic()

    def _rebalance_ended(self) -> None:
        if self._rebalance_since is not None:
            duration = time.monotonic() - self._rebalance_since
            self._rebalance_since = None
            self.rebalances += 1
            self.observers.rebalanced(duration)

    # -- lifecycle -----------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        client = self.client = self.settings.build_client(self._transport)
        client.watch(self.reachability)
        started, before, subscribed = time.monotonic(), totals(self.counters), False
        try:
            await client.start()
            client.on_refused(self._refused)
            if self._producer is not None and self._producer.started:
                self._producer.client.on_refused(self._refused)
            async with anyio.create_task_group() as tg:
                # The task group exists before the first assignment can arrive.
                self._tg = tg
                topics, pattern = self._registry.subscription()
                client.subscribe(
                    topics=topics,
                    pattern=pattern,
                    listener=RebalanceAdapter(self._on_revoked, self._on_assigned, self.fail),
                )
                subscribed = True
                log.info("%s", describe_start(self.settings, self._registry.specs()))
                tg.start_soon(self._fetch_loop, name="asyncconsumer fetch")
                tg.start_soon(self._commit_loop, name="asyncconsumer commit")
                tg.start_soon(self.liveness.run, name="asyncconsumer liveness")
                tg.start_soon(warn_missing_topics, client, topics, name="asyncconsumer topics")
                task_status.started()
                try:
                    await self._stop_requested.wait()
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown()
                    tg.cancel_scope.cancel()
        finally:
            await client.stop()  # leaves the group
            if subscribed:
                report = describe_stop(
                    self.settings.group_id,
                    before,
                    totals(self.counters),
                    self._final_offsets,
                    self._drain_time,
                    time.monotonic() - started,
                )
                log.info("%s", report)
        if self.failure is not None:
            raise self.failure

    def fail(self, exc: BaseException) -> None:
        """Record the first error, and stop; ``run()`` raises it once stopped."""
        if self.failure is None:
            self.failure = exc
        elif exc is not self.failure:
            log.error("another error while stopping on %r", self.failure, exc_info=exc)
        self._stop_requested.set()

    async def _shutdown(self) -> None:
        self._closing = True
        self._fetch_scope.cancel()
        async with self._lock:
            lanes = list(self._lanes.values())
            timeout = 0.0 if self._aborted else self.settings.shutdown_timeout
            began = time.monotonic()
            await self._drain(lanes, timeout)
            self._drain_time = time.monotonic() - began
            refused = isinstance(self.failure, AuthenticationError)
            try:
                # A new connection cannot be had: do not wait commit_timeout for one.
                with anyio.fail_after(REFUSED_COMMIT_TIMEOUT if refused else None):
                    await self._commit()
            except TimeoutError:
                log.error("final commit impossible (the cluster refuses the connection)")
            except CommitError as exc:
                log.error("final commit failed, these records will be delivered again: %s", exc)
            except Exception as exc:  # an on_commit hook
                self.fail(exc)
            tps = sorted(self._lanes)
            self._final_offsets = {
                lane.tp: lane.offsets.committed for lane in lanes if lane.offsets.committed >= 0
            }
            self._lanes.clear()
            for pool in self._pools.values():
                pool.close()
            if tps:
                try:
                    await self._run_hooks(self._on_revoke, tps)
                except Exception as exc:
                    self.fail(exc)

    # -- tasks ---------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        """Poll, and hand each partition's records to its lane.

        Backpressure: a lane at its bound is left out of the poll, so its
        records stay in aiokafka's buffer (which fetches nothing more for a
        partition until that buffer is consumed: memory stays at one fetch
        response). When it drains to its low-water mark the poll is interrupted
        and takes it again at once, with no fetch round trip. Only when every
        lane is full are they paused in the client, so that polling, which
        keeps the member in the group, takes nothing.
        """
        client = self._client()
        lanes = self._lanes
        full = self._full
        polled = self.liveness.polled
        counters = self.counters
        options = {"timeout_ms": self._poll_ms, "max_records": self._poll_records}
        try:
            with self._fetch_scope:
                while True:
                    wanted: list[TopicPartition] = []
                    if full:
                        wanted = [tp for tp in lanes if tp not in full]
                        if not wanted:
                            self._pause_in_client(full)
                    with anyio.CancelScope() as poll:
                        self._poll_scope = poll
                        batches = await client.getmany(*wanted, **options)
                    self._poll_scope = None
                    if poll.cancelled_caught:
                        continue  # a lane drained: poll again, with it
                    polled()
                    ahead: list[tuple[Lane, list[Record]]] | None = None
                    for tp, records in batches.items():
                        lane = lanes.get(tp)
                        if lane is None:
                            self._no_lane_yet(tp, records)
                            continue
                        if lane.closed:
                            continue  # stopping, or revoked: not committed past them
                        counters[tp.topic].fetched += len(records)
                        if lane.commit_ahead:
                            ahead = ahead or []
                            ahead.append((lane, records))
                        else:
                            self._push(lane, records)
                    if ahead:
                        await self._commit_ahead(ahead)
                    # getmany returns without suspending when records are ready:
                    # let the lanes run.
                    await anyio.lowlevel.checkpoint()
        except Exception as exc:
            self.fail(exc)

    def _no_lane_yet(self, tp: TopicPartition, records: list[Record]) -> None:
        """Records of a partition without a lane. If it was revoked meanwhile, the
        next owner fetches them. If it is still assigned, the client assigned it
        before calling ``_on_assigned`` (which may wait for the lock): the client's
        position has passed these records, and dropping them would let a later
        commit skip them. Seek back to the first and pause the partition until its
        lane exists."""
        client = self._client()
        if self._closing or tp not in client.assignment():
            return
        client.seek(tp, records[0].offset)
        client.pause(tp)
        self._awaiting_lane.add(tp)

    def _push(self, lane: Lane, records: list[Record]) -> None:
        if lane.push(records) and not lane.paused:
            lane.paused = True
            self._full.add(lane.tp)

    async def _commit_ahead(self, batches: list[tuple[Lane, list[Record]]]) -> None:
        """``at_most_once``: commit the records' offsets, then let their lanes run them.

        If the commit fails, the partitions are sought back to these records, which
        are fetched and offered again (never run uncommitted)."""
        async with self._lock:
            live = [(lane, records) for lane, records in batches if not lane.closed]
            if not live:
                return
            before = {lane.tp: lane.offsets.completed for lane, _ in live}
            for lane, records in live:
                lane.offsets.completed = records[-1].offset + 1
            committed = False
            try:
                await self._commit([lane.tp for lane, _ in live])
                committed = True
            except CommitError as exc:
                log.warning("at_most_once commit failed, fetching the records again: %s", exc)
            finally:
                if not committed:  # failed, or cancelled by the stop
                    client = self._client()
                    for lane, records in live:
                        lane.offsets.completed = before[lane.tp]
                        with contextlib.suppress(IllegalStateError):
                            client.seek(lane.tp, records[0].offset)
            if committed:
                for lane, records in live:
                    self._push(lane, records)

    async def _commit(
        self, tps: Iterable[TopicPartition] | None = None, *, revoking: bool = False
    ) -> None:
        """Commit completed offsets, tell the ``on_commit`` hooks; raise CommitError."""
        error: CommitError | None = None
        started = time.monotonic()
        try:
            done = await self._book.commit(self._client(), tps, revoking=revoking)
        except CommitError as exc:
            done, error = exc.offsets, exc
        if done:  # else there was nothing to commit: no request was sent
            self.observers.committed(time.monotonic() - started, error)
            for hook in self._on_commit:
                await hook(dict(done), error)
        if error is not None:
            raise error

    def _refused(self, error: AuthenticationError) -> None:
        """A connection was refused for good (credentials, certificate): stop on it
        rather than let aiokafka retry it forever."""
        if not isinstance(self.failure, AuthenticationError):
            self.fail(error)

    def _pause_in_client(self, tps: set[TopicPartition]) -> None:
        client = self._client()
        new = tps - self._client_paused
        if new:
            client.pause(*new)
            self._client_paused |= new

    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval
        while True:
            await anyio.sleep(interval)
            async with self._lock:
                if self._closing:
                    return
                try:
                    await self._commit(self._lanes)
                except CommitError as exc:
                    # Never fatal: the offsets stay pending and are committed at the
                    # next interval, or, if the partitions moved, the next owner
                    # starts from the last committed offset.
                    log.warning("%s; retrying at the next interval", exc)
                except Exception as exc:  # an on_commit hook
                    self.fail(exc)
                    return

    # -- rebalance -----------------------------------------------------------

    async def _on_revoked(self, tps: list[TopicPartition]) -> None:
        # No shortcut while stopping: a revoke that races with the stop sequence
        # waits for it (the lock), so the final commit still lands in this
        # generation, and then finds nothing left to do.
        self._rebalance_began()
        async with self._lock:
            lanes = [self._lanes.pop(tp) for tp in tps if tp in self._lanes]
            if not lanes:
                return
            self._full.difference_update(tps)
            self._client_paused.difference_update(tps)
            self._awaiting_lane.difference_update(tps)
            owned = [lane.tp for lane in lanes]
            await self._drain(lanes, self.settings.rebalance_drain_timeout)
            try:
                await self._commit(owned, revoking=True)
            except CommitError as exc:
                log.warning("commit before revoke failed, the next owner will redo: %s", exc)
            self._book.forget(owned)
            await self._run_hooks(self._on_revoke, owned)

    async def _on_assigned(self, tps: list[TopicPartition]) -> None:
        if self._closing:
            return
        async with self._lock:
            new: list[Lane] = []
            for tp in tps:
                if tp not in self._lanes:
                    self._lanes[tp] = lane = self._make_lane(tp, self._registry.resolve(tp.topic))
                    new.append(lane)
            self._resume_awaiting(tps)
            await self._skip_completed(
                [lane for lane in new if isinstance(lane, KeyedLane) and lane.txn is None]
            )
            await self._start_transactions([lane for lane in new if lane.txn is not None])
            if self._start_at is not None and tps:
                when, self._start_at = self._start_at, None
                await self.seek_to(when, tps)
            if self._offset_store is not None and tps:
                stored = await self._offset_store.load(tps)
                for tp, offset in stored.items():
                    if tp in self._lanes:
                        self.seek(tp, offset)
            if tps:
                await self._run_hooks(self._on_assign, tps)
            assert self._tg is not None
            for lane in new:
                lane.start(self._tg)
        self._rebalance_ended()

    def _resume_awaiting(self, tps: list[TopicPartition]) -> None:
        """The partitions held back for want of a lane have one now: fetch them again.
        (Those not in ``tps`` were revoked before their lane came: forgotten.)"""
        waiting, self._awaiting_lane = self._awaiting_lane, set()
        resume = [tp for tp in tps if tp in waiting]
        if resume:
            with contextlib.suppress(IllegalStateError):  # revoked meanwhile
                self._client().resume(*resume)

    def _processor(self, spec: HandlerSpec) -> Processor:
        processor = self._processors.get(spec.name)
        if processor is None:
            processor = self._processors[spec.name] = Processor(
                compose(spec.fn, self._middleware),
                spec.decode,
                name=spec.name,
                retry=spec.retry,
                on_failure=spec.on_failure,
                dead_letter_topic=spec.dead_letter_topic,
                publish_to=spec.publish_to,
                producer=self._producer,
                group_id=self.settings.group_id or "",
                counters=self.counters,
                timing=self.observers.timing,
                backoff_scale=self._backoff_scale,
            )
        return processor

    def _make_lane(self, tp: TopicPartition, spec: HandlerSpec) -> Lane:
        lane = self._new_lane(tp, spec)
        if spec.delivery == "exactly_once":
            assert self._producer is not None
            lane.txn = PartitionTransactions(
                tp,
                self._producer,
                self.settings.group_id or "",
                self.counters[tp.topic],
                interval=self.settings.commit_interval,
            )
        return lane

    def _new_lane(self, tp: TopicPartition, spec: HandlerSpec) -> Lane:
        offsets = self._book.track(tp)
        bound, name = self._bound, spec.name
        ahead = spec.delivery == "at_most_once"
        if spec.batch is not None:
            return BatchLane(
                tp,
                self._processor(spec),
                offsets,
                self,
                bound=bound,
                max_records=spec.batch.max_records,
                max_wait=spec.batch.max_wait,
                handler_name=name,
                commit_ahead=ahead,
            )
        if spec.ordering == "partition":
            return PartitionLane(
                tp,
                self._processor(spec),
                offsets,
                self,
                bound=bound,
                handler_name=name,
                commit_ahead=ahead,
            )
        pool = self._pools.get(name)
        if pool is None:
            assert self._tg is not None
            pool = self._pools[name] = WorkerPool(self._processor(spec), spec.concurrency, name)
            pool.start(self._tg)
        if spec.delivery == "exactly_once":
            return TransactionalKeyedLane(
                tp,
                pool,
                offsets,
                self,
                by_key=spec.ordering == "key",
                bound=bound,
                handler_name=name,
            )
        return KeyedLane(
            tp,
            pool,
            offsets,
            self,
            by_key=spec.ordering == "key",
            bound=bound,
            handler_name=name,
            commit_ahead=ahead,
            wait_for_skip=True,  # records fetched meanwhile wait for _skip_completed
        )

    async def _start_transactions(self, lanes: list[Lane]) -> None:
        """Start the transactional producers of newly assigned ``exactly_once``
        partitions, which fences their previous owners, then read the partitions'
        committed offsets again and resume there: a transaction the previous owner
        committed after aiokafka read them is not run twice (see _transactions)."""
        if not lanes:
            return
        failed: list[Exception] = []

        async def start(txn: PartitionTransactions) -> None:
            try:
                await txn.start()
            except Exception as exc:  # reported once, below, not as an ExceptionGroup
                failed.append(exc)

        async with anyio.create_task_group() as tg:
            for lane in lanes:
                assert lane.txn is not None
                tg.start_soon(start, lane.txn)
        if failed:
            exc = failed[0]
            if isinstance(exc, KafkaError):  # what a broker without transactions answers
                raise AsyncConsumerError(
                    "delivery='exactly_once' needs a broker with transactions: starting the "
                    f"transactional producers of {sorted(lane.tp for lane in lanes)} failed "
                    f"with {exc!r}"
                ) from exc
            raise exc  # AuthenticationError, ConfigurationError: clear as they are
        committed = await self._client().committed_metadata([lane.tp for lane in lanes])
        for lane in lanes:
            meta = committed.get(lane.tp)
            if self._lanes.get(lane.tp) is not lane:
                continue
            if meta is not None and meta.offset >= 0:
                self.seek(lane.tp, meta.offset)
                lane.offsets.committed = meta.offset
            if isinstance(lane, TransactionalKeyedLane):
                lane.resume_at(meta)  # and the completed records above it are skipped

    async def _skip_completed(self, lanes: list[KeyedLane]) -> None:
        """Read which records above the committed offsets already completed
        (the previous owner wrote them into the commit metadata). Until this
        returns, the lanes hold what the fetch loop gives them."""
        if not lanes:
            return
        committed = {}
        try:
            committed = await self._client().committed_metadata([lane.tp for lane in lanes])
        except KafkaError as exc:
            log.warning("cannot read commit metadata, completed records may run again: %r", exc)
        finally:
            for lane in lanes:
                meta = committed.get(lane.tp)
                known = set()
                if meta is not None and meta.offset >= 0:
                    known = decode_completed(meta.offset, meta.metadata)
                lane.skip_completed(known)

    # -- lanes ---------------------------------------------------------------

    def lane_failed(self, lane: Lane, record: Record | None, exc: Exception) -> None:
        if record is None:  # in the lane's transactions
            where = f"{lane.tp.topic}[{lane.tp.partition}]"
            exc.add_note(f"asyncconsumer: raised by the transactions of {where}")
        else:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            exc.add_note(f"asyncconsumer: raised while handling {where} in {lane.handler_name}")
        log.error("handling %s failed with %r; stopping", where, exc)
        self.fail(exc)

    def lane_drained(self, lane: Lane) -> None:
        self._unpause(lane)

    def lane_rewind(self, lane: Lane, offset: int) -> None:
        if self._lanes.get(lane.tp) is lane:
            self.seek(lane.tp, offset)

    def lane_fenced(self, lane: Lane) -> None:
        # The partition is another member's now: rejoin, which revokes it here.
        if self.client is not None:
            self.client.request_rejoin()

    async def lane_committed(self, lane: Lane, offset: int, seconds: float) -> None:
        self.observers.committed(seconds, None)
        for hook in self._on_commit:
            await hook({lane.tp: offset}, None)

    def _unpause(self, lane: Lane) -> None:
        if not lane.paused:
            return
        lane.paused = False
        tp = lane.tp
        self._full.discard(tp)
        if tp in self._client_paused:
            # Only this partition: the others are still full, and resuming them
            # would make aiokafka fetch data that the next pause throws away.
            self._client_paused.discard(tp)
            with contextlib.suppress(IllegalStateError):  # no longer assigned
                self._client().resume(tp)
        if self._poll_scope is not None:
            self._poll_scope.cancel()

    async def _drain(self, lanes: Iterable[Lane], grace: float) -> None:
        lanes = list(lanes)
        self._draining.update(lanes)
        try:
            await self._drain_lanes(lanes, 0.0 if self._aborted else grace)
        finally:
            self._draining.difference_update(lanes)

    async def _drain_lanes(self, lanes: list[Lane], grace: float) -> None:
        for lane in lanes:
            lane.close()
        with anyio.move_on_after(grace):
            for lane in lanes:
                await lane.done.wait()
        for lane in lanes:
            if not lane.done.is_set():
                running = lane.running()
                if running:
                    log.warning(
                        "cancelling %s on %s[%d] at offsets %s after %.1fs: not committed",
                        lane.handler_name,
                        lane.tp.topic,
                        lane.tp.partition,
                        sorted(running),
                        grace,
                    )
                lane.cancel()
        for lane in lanes:
            await lane.done.wait()
        for lane in lanes:
            if lane.txn is not None:
                try:
                    await lane.txn.close()
                except Exception as exc:
                    log.warning("closing the transactional producer of %s: %r", lane.tp, exc)

    def _describe_running(self) -> list[str]:
        described = []
        for lane in self._lanes.values():
            running = lane.running()
            if running:
                offsets = ",".join(map(str, sorted(running)[:5]))
                described.append(
                    f"{lane.handler_name} on {lane.tp.topic}[{lane.tp.partition}]@{offsets}"
                )
        return described

    # -- helpers -------------------------------------------------------------

    async def _run_hooks(self, hooks: Sequence[RebalanceHook], tps: list[TopicPartition]) -> None:
        for hook in hooks:
            await hook(list(tps))

    def _client(self) -> ConsumerClient:
        if self.client is None:
            raise ConsumerStoppedError("the app is not running")
        return self.client

    def _assigned_lane(self, tp: TopicPartition) -> Lane:
        lane = self._lanes.get(tp)
        if lane is None:
            raise ValueError(f"{tp} is not assigned to this app")
        return lane
