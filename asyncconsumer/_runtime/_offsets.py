"""Per-partition offsets: processed (ready to commit) and committed."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import anyio
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from .._errors import CommitError

__all__ = ["OffsetBook", "PartitionOffsets"]

log = logging.getLogger("asyncconsumer")


class PartitionOffsets:
    """One partition's offsets. ``completed`` is the offset *after* the last
    processed record: the value to commit, so that the group resumes there.
    ``-1`` means nothing to commit yet.
    """

    __slots__ = ("committed", "completed")

    def __init__(self) -> None:
        self.completed = -1
        self.committed = -1


class OffsetBook:
    """The :class:`PartitionOffsets` of every partition a consumer owns."""

    __slots__ = ("_parts", "commit_timeout")

    def __init__(self, commit_timeout: float = 30.0) -> None:
        self._parts: dict[TopicPartition, PartitionOffsets] = {}
        self.commit_timeout = commit_timeout

    def track(self, tp: TopicPartition) -> PartitionOffsets:
        """The offsets of ``tp``, created empty on first use."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionOffsets()
        return part

    def get(self, tp: TopicPartition) -> PartitionOffsets | None:
        return self._parts.get(tp)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions that this consumer no longer owns."""
        for tp in tps:
            self._parts.pop(tp, None)

    def uncommitted(
        self, tps: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The processed offsets that differ from what was last committed."""
        parts = self._parts
        selected = parts.items() if tps is None else ((tp, parts[tp]) for tp in tps if tp in parts)
        return {
            tp: OffsetAndMetadata(p.completed, "")
            for tp, p in selected
            if p.completed >= 0 and p.completed != p.committed
        }

    async def commit(
        self,
        client: AIOKafkaConsumer,
        tps: Iterable[TopicPartition] | None = None,
        *,
        revoking: bool = False,
    ) -> dict[TopicPartition, int]:
        """Commit what is processed but not committed yet; return what was committed.

        ``revoking``: called from a revoke callback, where the member still owns
        the partitions until it rejoins. ``commit_timeout`` bounds the call: aiokafka
        retries retriable errors (coordinator unavailable, ...) without end.

        Raises :class:`CommitError` when the broker refuses (for example because
        the group rebalanced meanwhile) or ``commit_timeout`` passes; the offsets then
        stay uncommitted.
        """
        offsets = self.uncommitted(tps)
        if not offsets:
            return {}
        with anyio.move_on_after(self.commit_timeout) as scope:
            try:
                try:
                    await client.commit(offsets)
                except IllegalStateError:
                    if not revoking:
                        raise
                    # A pattern subscription that matched a new topic replaces
                    # aiokafka's subscription object before the rejoin, and
                    # commit() then refuses ("No partitions assigned") although
                    # the member still owns these partitions for this generation.
                    # The coordinator's commit is what aiokafka itself uses
                    # before a rejoin; it does not look at the assignment.
                    await client._coordinator.commit_offsets(None, offsets)
            except KafkaError as exc:
                raise CommitError(f"offset commit failed: {exc!r}") from exc
        if scope.cancelled_caught:
            raise CommitError(f"offset commit did not complete within {self.commit_timeout:.1f}s")
        done: dict[TopicPartition, int] = {}
        for tp, meta in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = meta.offset
            done[tp] = meta.offset
        log.debug("committed %s", done)
        return done
