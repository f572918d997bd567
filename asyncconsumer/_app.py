"""``ConsumerApp``: decorator-registered async handlers, rebalance hooks, lifespan, run/stop."""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
from aiokafka.structs import TopicPartition
from anyio.abc import TaskStatus

from ._codecs import CodecSpec
from ._config import ConsumerSettings, OffsetReset
from ._errors import ConfigurationError, ConsumerStoppedError
from ._handlers import BatchSettings, HandlerOptions, HandlerRegistry, Ordering, handler_name
from ._health import DEFAULT_BOUNDS, Health, HealthBounds, State, evaluate
from ._offset_store import OffsetStore
from ._producer import Producer
from ._retry import Delivery, FailurePolicy, Retry
from ._runtime._engine import CommitHook, Engine
from ._runtime._lanes import DEFAULT_WINDOW
from ._runtime._observe import Observers
from ._runtime._pipeline import CounterMap, Middleware
from ._runtime._rebalance import RebalanceHook
from ._runtime._snapshot import with_share
from ._runtime._together import Part, TrackedStatus, run_together
from ._security import Security, split_security_options
from ._seeking import Timestamp, timestamp_ms
from ._share._runner import ShareHandlerSpec, ShareRuntime
from ._share._runner import make_spec as make_share_spec
from ._statistics import Statistics
from ._threads import DEFAULT_MAX_THREADS
from ._transport import Transport

if TYPE_CHECKING:
    from .metrics import ConsumerMetrics

__all__ = ["CommitHook", "ConsumerApp", "Lifespan"]

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=RebalanceHook)
C = TypeVar("C", bound=CommitHook)

Lifespan = Callable[["ConsumerApp"], AbstractAsyncContextManager[None]]
"""``lifespan(app)``: an async context manager entered before the consumer starts
and exited after it stopped (open and close connection pools there). It exits
normally also when the app stopped on an error; ``run()`` raises that error after."""


class ConsumerApp:
    """A Kafka consumer group member that runs registered async handlers.

    Records of one partition are handled one at a time, in offset order;
    partitions run concurrently. The offset after the last record whose handler
    returned is committed every ``commit_interval`` seconds, before partitions
    are revoked, and at stop; a record whose handler is running, failed or was
    cancelled is never committed (at-least-once).

    Plain ``def`` handlers run in worker threads, at most ``max_threads`` at once.
    ``middleware`` wraps every handler attempt, the first one outermost (see
    :data:`~asyncconsumer.Middleware`). :attr:`producer` is a Kafka producer
    started with the app (``producer_options`` go to
    :class:`aiokafka.AIOKafkaProducer`); dead-lettering and ``publish_to`` use it,
    and handlers may too.

    Memory is bounded per partition: ``max_buffered_records`` (and
    ``max_buffered_bytes``) fetched records not started yet, and, under ``key`` /
    ``none`` ordering, ``completion_window`` records received beyond the
    partition's committable offset (a slow or retrying record holds that offset
    while other keys go on), and, for ``publish_to`` under ``partition`` ordering
    and batch handlers, ``completion_window`` records waiting for the broker's
    acknowledgement of what they published; a partition at a bound is not fetched
    until it is down to half.

    ``start_at`` (a timezone-aware ``datetime`` or epoch milliseconds) replays
    from a point in time: on the first assignment of each run, before the
    ``on_assign`` hooks, the assigned partitions are sought to their first record
    at or after it (see :meth:`seek_to_time`); later rebalances resume from the
    committed offsets as usual.

    ``offset_store`` (an :class:`~asyncconsumer.OffsetStore`, e.g.
    :class:`~asyncconsumer.integrations.sqlalchemy.SqlOffsetStore`) keeps offsets with
    the handlers' results in their database: on every assignment the partitions it
    has offsets for are sought there (after ``start_at``, before ``on_assign``).
    Handlers store them in their own transactions; they must complete in order
    (``ordering="partition"`` or batch handlers).

    ``bootstrap_servers="memory://<name>"`` runs against the
    :class:`~asyncconsumer.testing.MemoryKafka` of that name; in tests,
    :class:`~asyncconsumer.testing.TestClient` does that for you.

    ``security`` (a :class:`~asyncconsumer.Security`: TLS, SASL) secures every
    connection the app makes: its consumer and its producer. aiokafka's own security
    options (``security_protocol``, ``ssl_context``, ``sasl_*``) still work instead,
    and apply to the producer too unless ``producer_options`` has its own; giving
    both ``security`` and them is a :class:`~asyncconsumer.ConfigurationError`.
    A broker that refuses the credentials or the TLS handshake makes ``run()`` raise
    :class:`~asyncconsumer.AuthenticationError` (see docs/security.md).

    ``kafka_options`` are passed to :class:`aiokafka.AIOKafkaConsumer`
    (``max_poll_records``, ``fetch_max_wait_ms``, ``session_timeout_ms``,
    ``isolation_level``, ``client_id``, ...).
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | list[str],
        group_id: str,
        auto_offset_reset: OffsetReset = "latest",
        commit_interval: float = 5.0,
        shutdown_timeout: float = 30.0,
        drain_timeout: float | None = None,
        max_buffered_records: int = 1000,
        max_buffered_bytes: int | None = None,
        completion_window: int = DEFAULT_WINDOW,
        start_at: Timestamp | None = None,
        offset_store: OffsetStore[Any] | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
        lifespan: Lifespan | None = None,
        middleware: Sequence[Middleware] = (),
        producer_options: Mapping[str, Any] | None = None,
        security: Security | None = None,
        **kafka_options: Any,
    ) -> None:
        if not group_id:
            raise ConfigurationError(
                "ConsumerApp needs a group_id: it subscribes as a member of a consumer group"
            )
        if not isinstance(max_buffered_records, int) or max_buffered_records < 1:
            raise ConfigurationError(
                f"max_buffered_records must be an int >= 1, not {max_buffered_records!r}"
            )
        self.settings = ConsumerSettings(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            commit_interval=commit_interval,
            shutdown_timeout=shutdown_timeout,
            drain_timeout=drain_timeout,
            kafka_options=kafka_options,
            security=security,
        )
        if max_buffered_bytes is not None and (
            not isinstance(max_buffered_bytes, int) or max_buffered_bytes < 1
        ):
            raise ConfigurationError(
                f"max_buffered_bytes must be an int >= 1 or None, not {max_buffered_bytes!r}"
            )
        if not isinstance(completion_window, int) or completion_window < 1:
            raise ConfigurationError(
                f"completion_window must be an int >= 1, not {completion_window!r}"
            )
        self.max_buffered_records = max_buffered_records
        self.max_buffered_bytes = max_buffered_bytes
        self.completion_window = completion_window
        self.start_at = start_at
        if offset_store is not None and not isinstance(offset_store, OffsetStore):
            raise ConfigurationError(
                f"offset_store must implement OffsetStore (load, store), not {offset_store!r}"
            )
        self.offset_store = offset_store
        if start_at is not None:
            try:
                timestamp_ms(start_at)
            except ValueError as exc:
                raise ConfigurationError(f"start_at: {exc}") from None
        for layer in middleware:
            if not callable(layer):
                raise ConfigurationError(
                    f"middleware must be callables `async (msg, call_next)`, not {layer!r}"
                )
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        producer_options = dict(producer_options or {})
        if security is None and not split_security_options(producer_options):
            # The consumer's raw security options secure the producer as well.
            producer_options.update(split_security_options(kafka_options))
        self._producer = Producer(bootstrap_servers, security=security, **producer_options)
        self._lifespan = lifespan
        if not isinstance(max_threads, int) or max_threads < 1:
            raise ConfigurationError(f"max_threads must be an int >= 1, not {max_threads!r}")
        self._registry = HandlerRegistry(max_threads=max_threads)
        self._counters = CounterMap()
        self._on_assign: list[RebalanceHook] = []
        self._on_revoke: list[RebalanceHook] = []
        self._on_commit: list[CommitHook] = []
        self._engine: Engine | None = None
        self._share_specs: list[ShareHandlerSpec] = []
        self._share_runtime: ShareRuntime | None = None
        self._stop_early = False  # stop() before the first run(): that run stops at once
        self._has_run = False
        self._stack: AsyncExitStack | None = None
        self._background_error: BaseException | None = None
        self._observers = Observers()  # commit and rebalance events, for metrics
        self._metrics: ConsumerMetrics | None = None  # asyncconsumer.metrics.instrument()
        self._state: State = "idle"
        self._error: BaseException | None = None
        # Set by asyncconsumer.testing.TestClient: the clients' transport (None: the
        # one bootstrap_servers selects) and a factor on retry backoffs.
        self._transport: Transport | None = None
        self._backoff_scale = 1.0

    # -- registration ----------------------------------------------------------

    def handler(
        self,
        *topics: str,
        pattern: str | re.Pattern[str] | None = None,
        key_codec: CodecSpec = "bytes",
        value_codec: CodecSpec = "bytes",
        ordering: Ordering = "partition",
        concurrency: int | None = None,
        retry: Retry | None = None,
        on_failure: FailurePolicy = "stop",
        dead_letter_topic: str | None = None,
        delivery: Delivery = "at_least_once",
        publish_to: str | None = None,
    ) -> Callable[[F], F]:
        """Register ``async def handler(msg: Message) -> None`` for topics or a pattern.

        ``pattern`` is a regular expression matched against topic names from
        their start (:func:`re.match`); topics created later that match it are
        picked up at the next metadata refresh (``metadata_max_age_ms``).

        ``ordering``: ``"partition"`` (default) runs one record at a time per
        partition, in offset order. ``"key"`` runs records of one key in offset
        order and different keys concurrently (records without a key share one
        lane per partition). ``"none"`` runs records in any order. With ``key``
        and ``none``, up to ``concurrency`` (default 100) records of this handler
        run at once, and the committed offset of a partition is the one after its
        highest contiguous completed record.

        Failures: ``retry`` (default: none) runs a failed record again after a
        backoff; meanwhile the partition (``partition`` ordering) or the record's
        key (``key``) waits, everything else goes on. After the last attempt, or at
        once for a record that cannot be decoded, ``on_failure`` applies:
        ``"stop"`` (default: stop the app, the record is not committed),
        ``"dead_letter"`` (publish it to ``dead_letter_topic``, default
        ``<topic>.DLQ``, with provenance headers, then go on) or ``"skip"`` (log,
        count, go on).

        ``delivery="at_most_once"`` commits records' offsets before their handler
        runs (a crash loses them instead of running them twice).
        ``delivery="exactly_once"`` commits what the handler produces and the offsets
        it consumed in one Kafka transaction per partition, in every ordering mode
        (see docs/delivery.md). ``publish_to``
        publishes what the handler returns (if not ``None``) with the record's key,
        before the record counts as completed.
        """
        options = HandlerOptions(retry, on_failure, dead_letter_topic, delivery, publish_to)

        def register(fn: F) -> F:
            self._registry.add(
                fn,
                topics,
                pattern,
                key_codec,
                value_codec,
                ordering=ordering,
                concurrency=concurrency,
                options=options,
            )
            return fn

        return register

    def batch_handler(
        self,
        *topics: str,
        pattern: str | re.Pattern[str] | None = None,
        max_records: int = 500,
        max_wait: float = 0.05,
        key_codec: CodecSpec = "bytes",
        value_codec: CodecSpec = "bytes",
        retry: Retry | None = None,
        on_failure: FailurePolicy = "stop",
        dead_letter_topic: str | None = None,
        delivery: Delivery = "at_least_once",
        publish_to: str | None = None,
    ) -> Callable[[F], F]:
        """Register ``async def handler(msgs: list[Message]) -> None``.

        It receives up to ``max_records`` records of one partition, in offset
        order, waiting up to ``max_wait`` seconds for a short batch to fill; the
        records count as completed when it returns. Partitions run concurrently.

        ``retry``, ``on_failure``, ``delivery`` as for :meth:`handler`; a batch is
        retried, dead-lettered or skipped as a whole, except records that cannot be
        decoded, which take the ``on_failure`` path alone before the batch runs.
        With ``publish_to`` the handler returns a list of values to publish.
        """
        options = HandlerOptions(retry, on_failure, dead_letter_topic, delivery, publish_to)

        def register(fn: F) -> F:
            self._registry.add(
                fn,
                topics,
                pattern,
                key_codec,
                value_codec,
                batch=BatchSettings(max_records, max_wait),
                options=options,
            )
            return fn

        return register

    def share_handler(
        self,
        *topics: str,
        group_id: str | None = None,
        key_codec: CodecSpec = "bytes",
        value_codec: CodecSpec = "bytes",
        concurrency: int = 10,
        retry: Retry | None = None,
        on_failure: FailurePolicy = "stop",
        dead_letter_topic: str | None = None,
        publish_to: str | None = None,
        auto_offset_reset: Literal["earliest", "latest"] | None = None,
        group_configs: Mapping[str, str] | None = None,
    ) -> Callable[[F], F]:
        """Register ``async def handler(msg: ShareMessage) -> None`` as a member of a
        share group (KIP-932, Apache Kafka 4.2+; see docs/share-groups.md).

        Any number of apps (processes, machines) may run it on the same partitions:
        the broker hands each record to one of them. Up to ``concurrency`` records
        run at once, in no order. ``group_id`` names the share group (default: the
        app's ``group_id``). A handled record is accepted; a failed one with a
        ``retry`` left is held for the backoff and then released (the broker delivers
        it again, ``msg.delivery_count`` one higher, which is the attempt number);
        after the last attempt ``on_failure`` applies: ``"dead_letter"`` (published,
        then accepted), ``"skip"`` (rejected: archived by the broker) or ``"stop"``
        (released; the app stops). Middleware and ``publish_to`` apply as for
        :meth:`handler`; the app's ``security`` secures its connections (aiokafka's own
        security options do not: a ``ConfigurationError``). ``auto_offset_reset`` and
        ``group_configs`` set the share group's configs, as for
        :class:`~asyncconsumer.ShareConsumer`.

        An app may have both share handlers and consumer-group handlers: they start and
        stop together, and an error in either stops both.
        """

        def register(fn: F) -> F:
            _check_async(fn, "share handler")
            self._share_specs.append(
                make_share_spec(
                    fn,
                    topics,
                    group_id=group_id,
                    key_codec=key_codec,
                    value_codec=value_codec,
                    concurrency=concurrency,
                    retry=retry,
                    on_failure=on_failure,
                    dead_letter_topic=dead_letter_topic,
                    publish_to=publish_to,
                    auto_offset_reset=auto_offset_reset,
                    group_configs=dict(group_configs or {}),
                )
            )
            return fn

        return register

    def on_assign(self, hook: H) -> H:
        """Register ``async def hook(partitions: list[TopicPartition])``, run after
        partitions are assigned and before their records are handled; it may
        :meth:`seek`."""
        self._on_assign.append(_check_hook(hook))
        return hook

    def on_revoke(self, hook: H) -> H:
        """Register ``async def hook(partitions: list[TopicPartition])``, run when
        partitions are taken away, after their in-flight records finished and
        their offsets were committed; also run at stop."""
        self._on_revoke.append(_check_hook(hook))
        return hook

    def on_commit(self, hook: C) -> C:
        """Register ``async def hook(offsets: dict[TopicPartition, int], error:
        CommitError | None)``, run after every commit with the offsets it stored
        (or tried to: then ``error`` says why it failed; they are retried). An
        exception from the hook stops the app."""
        self._on_commit.append(_check_async(hook, "on_commit hook"))
        return hook

    # -- running ---------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop`, an error, or cancellation; then stop gracefully.

        Raises the first exception of a handler or hook (the original exception,
        with a note naming the record), after the graceful stop. :attr:`state`
        follows the run: ``starting``, ``running`` once subscribed, then
        ``stopped``, or ``failed`` with :attr:`error`.
        """
        if self.running:
            raise RuntimeError("this app is already running")
        self._state, self._error = "starting", None
        try:
            await self._run(_Lifecycle(task_status, self))
        except Exception as exc:
            self._state, self._error = "failed", exc
            raise
        except BaseException:
            self._state = "stopped"
            raise
        self._state = "stopped"

    async def _run(self, task_status: TaskStatus[None]) -> None:
        self._check_handlers()
        engine = self._engine = self._make_engine() if self._registry else None
        runtime = self._share_runtime = self._make_share_runtime(engine)
        parts: list[Part] = [part for part in (engine, runtime) if part is not None]
        self._producer._transport = self._transport
        if self._stop_early:
            for part in parts:
                part.request_stop()
        failure: Exception | None = None
        try:
            await self._producer.start()
            try:
                async with self._lifespan_context():
                    try:
                        await run_together(parts, task_status=task_status)
                    except Exception as exc:
                        # The lifespan closes its resources the normal way; the
                        # error is raised once it has.
                        failure = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await self._producer.stop()
        finally:
            self._engine = self._share_runtime = None
            self._stop_early = False
            self._has_run = True
        if failure is not None:
            raise failure

    def _check_handlers(self) -> None:
        if not self._registry and not self._share_specs:
            raise ConfigurationError(
                "no handlers registered: use @app.handler(...) or @app.share_handler(...)"
            )
        if self.offset_store is not None and self._registry:
            self._registry.check_in_order("an offset_store")
        if self._share_specs and split_security_options(self.settings.kafka_options):
            raise ConfigurationError(
                "share handlers are secured by security= (an asyncconsumer.Security), "
                "not by aiokafka's own security options"
            )
        if self._registry:
            for spec in self._share_specs:
                if (spec.group_id or self.settings.group_id) == self.settings.group_id:
                    raise ConfigurationError(
                        f"share handler {spec.name}: give it a group_id of its own; the app's "
                        f"{self.settings.group_id!r} names its consumer group, and a consumer "
                        "group and a share group cannot have the same id"
                    )

    def _make_share_runtime(self, engine: Engine | None) -> ShareRuntime | None:
        if not self._share_specs:
            return None
        return ShareRuntime(
            self._share_specs,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=self.settings.group_id or "",
            middleware=self.middleware,
            producer=self._producer,
            counters=self._counters,
            shutdown_timeout=self.settings.shutdown_timeout,
            timing=self._observers.timing,
            # one monitor of the event loop: the engine's, when there is one
            liveness=engine.liveness if engine is not None else None,
            security=self.settings.security,
        )

    def _make_engine(self) -> Engine:
        return Engine(
            self.settings,
            self._registry,
            self._on_assign,
            self._on_revoke,
            max_buffered_records=self.max_buffered_records,
            max_buffered_bytes=self.max_buffered_bytes,
            completion_window=self.completion_window,
            start_at=None if self.start_at is None else timestamp_ms(self.start_at),
            offset_store=self.offset_store,
            middleware=self.middleware,
            on_commit=self._on_commit,
            producer=self._producer,
            counters=self._counters,
            observers=self._observers,
            transport=self._transport,
            backoff_scale=self._backoff_scale,
        )

    def stop(self) -> None:
        """Ask the app to stop gracefully; returns at once (``run()`` returns when stopped).

        Called before the app's first ``run()`` (a signal during start-up), that
        run stops at once; called after a run returned, it does nothing."""
        parts = [p for p in (self._engine, self._share_runtime) if p is not None]
        for part in parts:
            part.request_stop()
        if not parts and not self._has_run:
            self._stop_early = True

    def abort(self) -> None:
        """Stop now: in-flight handlers are cancelled without waiting (their
        records are not committed); completed offsets are still committed.
        Before the first ``run()`` and after a run, like :meth:`stop`."""
        parts = [p for p in (self._engine, self._share_runtime) if p is not None]
        for part in parts:
            part.abort()
        if not parts and not self._has_run:
            self._stop_early = True

    async def __aenter__(self) -> ConsumerApp:
        """Start the app in the background; it is subscribed when this returns."""
        stack = AsyncExitStack()
        tg = await stack.enter_async_context(anyio.create_task_group())
        try:
            await tg.start(self._run_in_background)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop gracefully; raise the error the app stopped on, if any."""
        self.stop()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        error, self._background_error = self._background_error, None
        if error is not None:
            if exc is None:
                raise error
            exc.add_note(f"asyncconsumer: the app had also stopped on {error!r}")

    async def _run_in_background(self, *, task_status: TaskStatus[None]) -> None:
        status = TrackedStatus(task_status)
        try:
            await self.run(task_status=status)
        except Exception as exc:
            if not status.called:
                raise  # start-up failed: __aenter__ raises it
            self._background_error = exc

    # -- while running ------------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Handle ``tp`` from ``offset`` on (records buffered for it are dropped).

        Call it from ``on_assign`` to resume from an external offset store, or at
        any time while running. The offset is committed as the partition's
        position until a later record completes. Records of ``tp`` running at
        the time of the seek finish (or are cancelled by a stop) but complete
        nothing: they never move the committed offset, and under ``key``
        ordering the records of their key wait for them.
        """
        self._running().seek(tp, offset)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Seek the given (default: all assigned) partitions to their earliest
        offset, as :meth:`seek` does (the offset is looked up first)."""
        await self._running().seek_to("beginning", partitions)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Seek the given (default: all assigned) partitions to their end, as
        :meth:`seek` does: the end offset becomes the committed position, so a
        restart does not replay what was skipped."""
        await self._running().seek_to("end", partitions)

    async def seek_to_time(self, when: Timestamp, *partitions: TopicPartition) -> None:
        """Seek the given (default: all assigned) partitions to their first record
        whose timestamp is at or after ``when`` (a timezone-aware ``datetime`` or
        epoch milliseconds), as :meth:`seek` does; a partition with no such record
        goes to its end. Replays from a point in time: call it from ``on_assign``
        or while running."""
        await self._running().seek_to(timestamp_ms(when), partitions)

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of ``partition`` as the broker has it."""
        return await self._running().committed(partition)

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member currently handles."""
        return self._engine.assignment() if self._engine is not None else frozenset()

    def statistics(self) -> Statistics:
        """A snapshot of the runtime: assigned, in-flight, buffered, paused, offsets, loop
        lag; share handlers in ``share`` (and in ``handlers``, ``topics``)."""
        runtime = self._share_runtime
        if runtime is None:
            return self._running().statistics()
        base = None
        if self._registry:
            base = self._running().statistics()
        handlers, share = runtime.statistics()
        return with_share(base, handlers, share, self._counters, runtime.liveness)

    @property
    def producer(self) -> Producer:
        """The app's Kafka producer: started before the consumer and stopped (flushed)
        after it, so handlers, hooks and the lifespan can use it."""
        return self._producer

    @property
    def running(self) -> bool:
        return self._engine is not None or self._share_runtime is not None

    @property
    def state(self) -> State:
        """``idle`` (never run), ``starting`` (connecting, subscribing), ``running``,
        ``stopped`` (cleanly, or cancelled) or ``failed`` (see :attr:`error`)."""
        return self._state

    @property
    def error(self) -> BaseException | None:
        """What the last run stopped on (state ``failed``), else ``None``."""
        return self._error

    def health(self, bounds: HealthBounds = DEFAULT_BOUNDS) -> Health:
        """Liveness and readiness now: what ``/health/live`` and ``/health/ready`` answer."""
        statistics = None
        if self._state == "running":
            with suppress(ConsumerStoppedError):
                statistics = self.statistics()
        return evaluate(
            self._state,
            statistics,
            error=self._error,
            bounds=bounds,
            consumer_group=bool(self._registry),
        )

    def _running(self) -> Engine:
        if self._engine is None or self._engine.client is None:
            raise ConsumerStoppedError("the app is not running")
        return self._engine

    @asynccontextmanager
    async def _lifespan_context(self) -> AsyncIterator[None]:
        if self._lifespan is None:
            yield
        else:
            async with self._lifespan(self):
                yield


class _Lifecycle(TaskStatus[None]):
    """Marks the app running when its engine reports that it subscribed."""

    def __init__(self, inner: TaskStatus[None], app: ConsumerApp) -> None:
        self._inner = inner
        self._app = app

    def started(self, value: None = None) -> None:
        self._app._state = "running"
        self._inner.started(value)


def _check_hook(hook: RebalanceHook) -> RebalanceHook:
    return _check_async(hook, "rebalance hook")


T = TypeVar("T")


def _check_async(hook: T, what: str) -> T:
    is_async: bool = inspect.iscoroutinefunction(hook)
    if not is_async:
        raise ConfigurationError(
            f"{what} {handler_name(hook)} must be a coroutine function (async def)"
        )
    return hook
