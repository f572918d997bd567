"""Per-partition offsets: completed (ready to commit) and committed.

With records completing in offset order (``partition`` ordering, batches), the
committable offset is simply the one after the last completed record. With
concurrency (``key`` / ``none`` ordering) records complete out of order: a
:class:`CompletionTracker` keeps the committable offset at the lowest record not
completed yet (a slow or failed record holds it back, it is never skipped), and
remembers the completed offsets above it. Those are written, compactly, into the
commit's metadata, so that after a crash or a rebalance the next owner skips the
records that already completed instead of running them again.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections import deque
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING

import anyio
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from .._errors import CommitError

if TYPE_CHECKING:
    from .._message import Record
    from .._transport import ConsumerClient

__all__ = [
    "CompletionTracker",
    "OffsetBook",
    "PartitionOffsets",
    "decode_completed",
    "encode_completed",
]

log = logging.getLogger("asyncconsumer")

_offset = attrgetter("offset")

METADATA_PREFIX = "ac1:"
METADATA_MAX_CHARS = 4000  # Kafka's offset.metadata.max.bytes defaults to 4096


class PartitionOffsets:
    """One partition's offsets. ``completed`` is the offset *after* the last
    processed record: the value to commit, so that the group resumes there.
    ``-1`` means nothing to commit yet. ``above`` holds completed offsets beyond
    ``completed`` (only under concurrency).
    """

    __slots__ = ("above", "committed", "committed_above", "completed")

    def __init__(self) -> None:
        self.completed = -1
        self.committed = -1
        self.above: set[int] | None = None
        self.committed_above = 0

    def metadata(self) -> str:
        above = self.above
        if not above or self.completed < 0:
            return ""
        return encode_completed(self.completed, above)


class CompletionTracker:
    """Keeps ``offsets.completed`` at the lowest received, not completed offset.

    Records must be received in offset order (as a partition delivers them);
    they may complete in any order. Offsets need not be contiguous (compacted
    topics, transaction markers): only received offsets count.
    """

    __slots__ = ("_done", "_pending", "offsets")

    def __init__(self, offsets: PartitionOffsets) -> None:
        self.offsets = offsets
        self._pending: deque[int] = deque()  # received, not yet passed by the watermark
        self._done: set[int] = set()  # completed, above the watermark
        offsets.above = self._done

    @property
    def window(self) -> int:
        """Offsets received and not yet passed by the committable offset."""
        return len(self._pending)

    def receive(self, offset: int) -> None:
        self._pending.append(offset)

    def receive_all(self, records: Iterable[Record]) -> None:
        """:meth:`receive` for each record, in one call."""
        self._pending.extend(map(_offset, records))

    def complete(self, offset: int) -> None:
        pending = self._pending
        if not pending:
            return  # reset (seek) while the record ran
        if pending[0] != offset:
            self._done.add(offset)
            return
        pending.popleft()
        done = self._done
        last = offset
        while pending and pending[0] in done:
            last = pending.popleft()
            done.discard(last)
        self.offsets.completed = pending[0] if pending else last + 1

    def committable(self) -> tuple[int, set[int]]:
        """The offset to commit (the lowest received offset not completed; ``-1`` if
        none is known) and the completed offsets above it (the tracker's own set)."""
        pending = self._pending
        return (pending[0] if pending else self.offsets.completed), self._done

    def reset(self) -> None:
        """Forget everything received (a seek): nothing in flight counts any more."""
        self._pending.clear()
        self._done.clear()


def encode_completed(base: int, completed: Iterable[int]) -> str:
    """Encode completed offsets above ``base`` (the committed offset) as commit metadata.

    A bitmap (bit ``i``: offset ``base + 1 + i`` completed), zlib-compressed,
    base64. When it does not fit in :data:`METADATA_MAX_CHARS`, the highest
    offsets are left out: they will merely run again.
    """
    relative = sorted(o - base - 1 for o in completed if o > base)
    if not relative:
        return ""
    limit = relative[-1] + 1
    while limit > 0:
        bits = bytearray((limit + 7) // 8)
        for i in relative:
            if i >= limit:
                break
            bits[i >> 3] |= 1 << (i & 7)
        text = METADATA_PREFIX + base64.urlsafe_b64encode(zlib.compress(bytes(bits), 9)).decode()
        if len(text) <= METADATA_MAX_CHARS:
            return text
        limit //= 2
    return ""


def decode_completed(base: int, metadata: str | None) -> set[int]:
    """The completed offsets above ``base`` that ``metadata`` records; empty if it is
    not ours or cannot be read."""
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return set()
    try:
        bits = zlib.decompress(base64.urlsafe_b64decode(metadata[len(METADATA_PREFIX) :]))
    except (ValueError, zlib.error):
        log.warning("ignoring unreadable commit metadata %r", metadata[:40])
        return set()
    return {
        base + 1 + (i << 3) + bit
        for i, byte in enumerate(bits)
        if byte
        for bit in range(8)
        if byte >> bit & 1
    }


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
            tp: OffsetAndMetadata(p.completed, p.metadata())
            for tp, p in selected
            if p.completed >= 0
            and (p.completed != p.committed or (p.above and len(p.above) != p.committed_above))
        }

    async def commit(
        self,
        client: ConsumerClient,
        tps: Iterable[TopicPartition] | None = None,
        *,
        revoking: bool = False,
    ) -> dict[TopicPartition, int]:
        """Commit what is processed but not committed yet; return what was committed.

        ``revoking``: called from a revoke callback, where the member still owns
        the partitions until it rejoins (the client commits even if its subscription
        changed meanwhile). ``commit_timeout`` bounds the call: aiokafka
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
                await client.commit(offsets, revoking=revoking)
            except KafkaError as exc:
                raise CommitError(f"offset commit failed: {exc!r}", _plain(offsets)) from exc
        if scope.cancelled_caught:
            raise CommitError(
                f"offset commit did not complete within {self.commit_timeout:.1f}s",
                _plain(offsets),
            )
        done: dict[TopicPartition, int] = {}
        for tp, meta in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = meta.offset
                part.committed_above = len(part.above) if part.above else 0
            done[tp] = meta.offset
        log.debug("committed %s", done)
        return done


def _plain(offsets: dict[TopicPartition, OffsetAndMetadata]) -> dict[TopicPartition, int]:
    return {tp: meta.offset for tp, meta in offsets.items()}
