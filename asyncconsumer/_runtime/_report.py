"""What a run logs of its own: what it consumes at start, what it did at stop, and a
warning for a subscribed topic that the cluster does not have."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import anyio
from aiokafka.structs import TopicPartition

from .._config import ConsumerSettings
from .._handlers import HandlerSpec
from .._transport import ConsumerClient
from ._pipeline import CounterMap

__all__ = ["Totals", "describe_start", "describe_stop", "totals", "warn_missing_topics"]

log = logging.getLogger("asyncconsumer")

Totals = tuple[int, int, int]
"""Records handled, failed, dead-lettered."""

_SHOWN = 10  # partitions named in the stop line; the rest are counted


def describe_start(settings: ConsumerSettings, handlers: Iterable[HandlerSpec]) -> str:
    """``group 'g', bootstrap b:9092; handlers: name on topics (ordering=...), ...``."""
    servers = settings.bootstrap_servers
    if not isinstance(servers, str):
        servers = ",".join(servers)
    described = [f"{spec.name} on {_source(spec)} ({_mode(spec)})" for spec in handlers]
    return (
        f"consuming as group {settings.group_id!r} from {servers}; handlers: {'; '.join(described)}"
    )


def _source(spec: HandlerSpec) -> str:
    if spec.pattern is not None:
        return f"topics matching {spec.pattern.pattern}"
    return ", ".join(spec.topics)


def _mode(spec: HandlerSpec) -> str:
    if spec.batch is not None:
        mode = f"batches of up to {spec.batch.max_records}"
    elif spec.ordering == "partition":
        mode = "ordering=partition"
    else:
        mode = f"ordering={spec.ordering}, concurrency {spec.concurrency}"
    if spec.delivery != "at_least_once":
        mode += f", {spec.delivery}"
    return mode


def totals(counters: CounterMap) -> Totals:
    """Records handled, failed and dead-lettered so far, over every topic."""
    values = list(counters.values())
    return (
        sum(c.handled for c in values),
        sum(c.failed for c in values),
        sum(c.dead_lettered for c in values),
    )


def describe_stop(
    group: str | None,
    before: Totals,
    after: Totals,
    committed: Mapping[TopicPartition, int],
    drain: float,
    ran: float,
) -> str:
    """``stopped group 'g' after 12.0s: N records handled, ...; committed t[0]@5; ...``."""
    handled, failed, dead = (now - then for now, then in zip(after, before, strict=True))
    positions = [f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(committed.items())]
    if len(positions) > _SHOWN:
        positions[_SHOWN:] = [f"and {len(positions) - _SHOWN} more partitions"]
    return (
        f"stopped group {group!r} after {ran:.1f}s: {handled} records handled, "
        f"{failed} failed, {dead} dead-lettered; "
        f"committed offsets: {', '.join(positions) or 'none'}; drain took {drain:.2f}s"
    )


async def warn_missing_topics(
    client: ConsumerClient, topics: Sequence[str], after: float = 30.0
) -> None:
    """Once, ``after`` seconds into the run: warn about each subscribed topic that
    has no partitions in the cluster's metadata (a typo, on a broker that does not
    create topics on first use; the member then consumes nothing from it and may
    still be ready, as a member legitimately given no partition is)."""
    await anyio.sleep(after)
    for topic in topics:
        if not client.partitions_for_topic(topic):
            log.warning(
                "subscribed topic %r has no partitions after %gs: does it exist? "
                "(check its name; nothing is consumed from it)",
                topic,
                after,
            )
