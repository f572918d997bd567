"""``ConsumerApp.statistics()``: a snapshot of the runtime, for tests, health checks and metrics."""

from __future__ import annotations

from typing import NamedTuple

from aiokafka.structs import TopicPartition

__all__ = ["HandlerStatistics", "Statistics", "TopicStatistics"]


class HandlerStatistics(NamedTuple):
    """One handler's share of the runtime."""

    partitions: int
    """Assigned partitions this handler handles."""
    in_flight: int
    """Records whose handler call is running."""
    buffered: int
    """Records fetched and not started yet."""


class TopicStatistics(NamedTuple):
    """Totals for one topic since the app was created."""

    fetched: int
    """Records fetched (handed to the handler's lanes)."""
    handled: int
    """Records whose handler returned (batch handlers: each record of the batch)."""
    failed: int
    """Records whose last attempt failed, or that could not be decoded."""
    retried: int
    """Failed attempts that were retried."""
    dead_lettered: int
    """Failed records published to the dead-letter topic."""
    skipped: int
    """Failed records skipped (``on_failure="skip"``)."""
    transactions: int = 0
    """Kafka transactions committed (``delivery="exactly_once"``)."""
    aborted_transactions: int = 0
    """Kafka transactions aborted (their records ran again, or the app stopped)."""


class Statistics(NamedTuple):
    """What the app is doing right now."""

    assigned: frozenset[TopicPartition]
    """Partitions this member handles."""
    in_flight: int
    """Records whose handler is running."""
    buffered: int
    """Records fetched and not started yet."""
    paused: frozenset[TopicPartition]
    """Partitions whose fetching is paused because their buffer is full."""
    completed: dict[TopicPartition, int]
    """Per partition, the offset after the last completed record (what a commit would store)."""
    committed: dict[TopicPartition, int]
    """Per partition, the offset this member last committed."""
    highwater: dict[TopicPartition, int]
    """Per partition, the high watermark of the last fetch response (the offset after
    the last record in the partition): ``highwater - committed`` is the consumer lag."""
    rebalances: int
    """Rebalances completed since start (the initial join is the first)."""
    rebalance_age: float
    """Seconds the rebalance in progress has lasted (the initial join included); 0.0
    when none is in progress."""
    poll_age: float
    """Seconds since the fetch loop's last poll returned (it polls at least every 0.5 s)."""
    loop_lag: float
    """Event-loop lag at the last liveness check, in seconds."""
    max_loop_lag: float
    """Largest event-loop lag seen since start, in seconds."""
    handlers: dict[str, HandlerStatistics]
    """Per handler (by qualified name)."""
    topics: dict[str, TopicStatistics]
    """Per topic, totals since the app was created."""
    unreachable_for: float = 0.0
    """Seconds since a broker last answered one of the member's requests, while its
    requests fail or none is sent (small while the member is healthy: fetch responses
    and heartbeats keep arriving); 0.0 while a request waits for its answer."""
