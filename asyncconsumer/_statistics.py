"""``ConsumerApp.statistics()``: a snapshot of the runtime, for tests, health checks and metrics."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from aiokafka.structs import TopicPartition

__all__ = ["HandlerStatistics", "ShareStatistics", "Statistics", "TopicStatistics"]


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
    accepted: int = 0
    """Share handlers: records acknowledged as done (handled, or dead-lettered)."""
    released: int = 0
    """Share handlers: records given back for redelivery (a retry, ``on_failure="stop"``,
    or fetched while the app stopped)."""
    rejected: int = 0
    """Share handlers: records archived by the broker (``on_failure="skip"``)."""
    redelivered: int = 0
    """Share handlers: records fetched with ``delivery_count`` > 1 (released before, or
    their acquisition lock expired: a member died or was too slow)."""


class ShareStatistics(NamedTuple):
    """One share handler's membership of its share group (``@app.share_handler``).

    Its records' totals are in :attr:`Statistics.topics`, its running and fetched
    records in :attr:`Statistics.handlers`."""

    group: str
    """The share group."""
    assigned: frozenset[TopicPartition]
    """Partitions the group coordinator gave this member (others may have them too)."""
    joined: bool
    """Whether the group coordinator has accepted the member."""
    heartbeat_age: float
    """Seconds since the group coordinator last answered a heartbeat (since the start,
    before the first answer): heartbeats go every few seconds, so a large value means
    the coordinator is unreachable or the membership is lost."""
    fetch_age: float
    """Seconds since a share fetch was last answered without an error; 0.0 while every
    worker is busy (no fetch is due: backpressure, not a stall)."""
    lock_renewals: int
    """Acquisition locks renewed for records still running (KIP-1222)."""
    lock_expiries: int
    """Records decided after their acquisition lock expired (another member may have
    handled them too)."""
    acknowledge_errors: int
    """Acknowledgements the broker refused."""
    acknowledgements_dropped: int
    """Acknowledgements never delivered (a failed request, a lost share session): those
    records come back once their lock expires."""


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
    share: Mapping[str, ShareStatistics] = MappingProxyType({})
    """Per share handler (by qualified name): its share-group membership. The other
    fields above describe the consumer group only, except ``in_flight``, ``buffered``,
    ``loop_lag``, ``max_loop_lag``, ``handlers`` and ``topics``, which cover both."""
