"""``ConsumerApp.statistics()``: a :class:`~asyncconsumer.Statistics` from the runtime's parts."""

from __future__ import annotations

from collections.abc import Mapping

from aiokafka.structs import TopicPartition

from .._statistics import HandlerStatistics, ShareStatistics, Statistics, TopicStatistics
from .._transport import ConsumerClient, Reachability
from ._lanes import Lane
from ._liveness import LivenessMonitor
from ._pipeline import CounterMap

__all__ = ["snapshot", "topic_statistics", "with_share"]

_NO_STATS = HandlerStatistics(partitions=0, in_flight=0, buffered=0)


def snapshot(
    lanes: Mapping[TopicPartition, Lane],
    client: ConsumerClient | None,
    counters: CounterMap,
    liveness: LivenessMonitor,
    reachability: Reachability,
    *,
    rebalances: int,
    rebalance_age: float,
) -> Statistics:
    """What the lanes, the client and the monitors say now."""
    handlers: dict[str, HandlerStatistics] = {}
    for lane in lanes.values():
        stats = handlers.get(lane.handler_name, _NO_STATS)
        handlers[lane.handler_name] = HandlerStatistics(
            partitions=stats.partitions + 1,
            in_flight=stats.in_flight + lane.in_flight(),
            buffered=stats.buffered + lane.buffered,
        )
    return Statistics(
        assigned=frozenset(lanes),
        in_flight=sum(h.in_flight for h in handlers.values()),
        buffered=sum(h.buffered for h in handlers.values()),
        paused=frozenset(lane.tp for lane in lanes.values() if lane.paused),
        completed={
            lane.tp: lane.offsets.completed
            for lane in lanes.values()
            if lane.offsets.completed >= 0
        },
        committed={
            lane.tp: lane.offsets.committed
            for lane in lanes.values()
            if lane.offsets.committed >= 0
        },
        highwater=_highwater(lanes, client),
        rebalances=rebalances,
        rebalance_age=rebalance_age,
        poll_age=liveness.poll_age(),
        loop_lag=liveness.loop_lag,
        max_loop_lag=liveness.max_loop_lag,
        handlers=handlers,
        topics=topic_statistics(counters),
        unreachable_for=reachability.unreachable_for(),
    )


def topic_statistics(counters: CounterMap) -> dict[str, TopicStatistics]:
    """Per topic, the totals since the app was created."""
    return {
        topic: TopicStatistics(
            fetched=c.fetched,
            handled=c.handled,
            failed=c.failed,
            retried=c.retried,
            dead_lettered=c.dead_lettered,
            skipped=c.skipped,
            transactions=c.transactions,
            aborted_transactions=c.aborted_transactions,
            accepted=c.accepted,
            released=c.released,
            rejected=c.rejected,
            redelivered=c.redelivered,
        )
        for topic, c in counters.items()
    }


def with_share(
    base: Statistics | None,
    handlers: Mapping[str, HandlerStatistics],
    share: Mapping[str, ShareStatistics],
    counters: CounterMap,
    liveness: LivenessMonitor,
) -> Statistics:
    """``base`` (the consumer group's snapshot; ``None`` when the app has no
    consumer-group handlers) with the share handlers added: their running and
    fetched records, and their membership."""
    if base is None:
        base = Statistics(
            assigned=frozenset(),
            in_flight=0,
            buffered=0,
            paused=frozenset(),
            completed={},
            committed={},
            highwater={},
            rebalances=0,
            rebalance_age=0.0,
            poll_age=0.0,
            loop_lag=liveness.loop_lag,
            max_loop_lag=liveness.max_loop_lag,
            handlers={},
            topics=topic_statistics(counters),
        )
    return base._replace(
        in_flight=base.in_flight + sum(h.in_flight for h in handlers.values()),
        buffered=base.buffered + sum(h.buffered for h in handlers.values()),
        handlers={**base.handlers, **handlers},
        share=dict(share),
    )


def _highwater(
    lanes: Mapping[TopicPartition, Lane], client: ConsumerClient | None
) -> dict[TopicPartition, int]:
    # The fetch responses' high watermark: the broker's ListOffsets may be
    # wrong (see the embedded broker's gaps), this one is not.
    if client is None:
        return {}
    marks = {}
    for tp in lanes:
        mark = client.highwater(tp)
        if mark is not None:
            marks[tp] = mark
    return marks
