"""Proves delivery properties from the member logs, the producer's acknowledgements
and the broker's committed and end offsets.

- **no loss**: every acknowledged record was handled at least once;
- **order**: per key, within each continuous ownership, the handled sequence numbers
  increase strictly (with ``ordering="partition"``, the offsets per partition too;
  with ``"none"``, only: no record runs twice within one ownership).
  A continuous ownership (an *epoch*) of a partition by a member runs from an
  ``assign`` event of that member that names the partition to its next ``assign`` or
  ``revoke`` event, or the end of its log (a crash);
- **safe commits**: every offset a successful ``on_commit`` reported was handled,
  with every known record below it in its partition, before the commit was logged;
- **monotonic commits**: successful commits of a partition, in time order, never
  move its offset backwards;
- **duplicates**: handled records minus distinct handled records (scenarios bound it);
- **progress**: the committed offset of every partition equals its end offset;
- **broker-side commits**: the committed offsets *and commit metadata* sampled from
  the broker while the scenario ran (:class:`BrokerSample`) never cover a record that
  was not handled by the time of the sample: every known record below a committed
  offset, and every offset the metadata lists as completed above it, was handled
  before the broker answered; and a partition's committed offset never goes back
  from one sample to the next.
"""

from __future__ import annotations

import json
from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncconsumer._runtime._offsets import decode_completed

from .producer import Produced

TP = tuple[str, int]
Event = dict[str, Any]
INF = float("inf")


def read_log(path: Path) -> list[Event]:
    """The events of one member log; a torn last line (a kill mid-write) is dropped."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def read_logs(paths: Iterable[Path]) -> dict[str, list[Event]]:
    """Events per member id, in each member's write order."""
    members: dict[str, list[Event]] = defaultdict(list)
    for path in paths:
        if path.exists():
            for event in read_log(path):
                members[event["m"]].append(event)
    return dict(members)


@dataclass
class Report:
    """What the checker found; :meth:`problems` lists every property violated."""

    produced: int = 0
    handled: int = 0
    distinct: int = 0
    duplicates: int = 0
    lost: list[Produced] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    unsafe_commits: list[str] = field(default_factory=list)
    commit_regressions: list[str] = field(default_factory=list)
    broker_violations: list[str] = field(default_factory=list)
    broker_samples: int = 0  # samples of the group's offsets taken from the broker
    broker_checked: int = 0  # committed offsets in them that were checked
    metadata_checked: int = 0  # offsets listed as completed in their commit metadata
    lag: dict[TP, int] = field(default_factory=dict)
    commits: int = 0
    failed_commits: int = 0
    rebalances: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} records lost, e.g. {self.lost[:5]}")
        if self.order_violations:
            found.append(
                f"{len(self.order_violations)} order violations, e.g. {self.order_violations[:5]}"
            )
        if self.unsafe_commits:
            found.append(
                f"{len(self.unsafe_commits)} unsafe commits, e.g. {self.unsafe_commits[:5]}"
            )
        if self.commit_regressions:
            found.append(f"committed offsets moved backwards: {self.commit_regressions[:5]}")
        if self.broker_violations:
            found.append(
                f"{len(self.broker_violations)} commits on the broker covered unhandled "
                f"records, e.g. {self.broker_violations[:5]}"
            )
        lagging = {tp: n for tp, n in self.lag.items() if n}
        if lagging:
            found.append(f"lag not zero: {lagging}")
        return found

    def summary(self) -> str:
        return (
            f"produced={self.produced} handled={self.handled} distinct={self.distinct} "
            f"duplicates={self.duplicates} lost={len(self.lost)} commits={self.commits} "
            f"failed_commits={self.failed_commits} assignments={self.rebalances} "
            f"broker_samples={self.broker_samples} broker_checked={self.broker_checked} "
            f"metadata_checked={self.metadata_checked}"
        )


@dataclass(frozen=True)
class BrokerSample:
    """The group's committed offsets and metadata as the broker answered them at
    ``mono`` (``time.monotonic()`` once the answer was in)."""

    mono: float
    offsets: dict[TP, tuple[int, str]]


def handled_records(members: Mapping[str, list[Event]]) -> list[Event]:
    return [e for events in members.values() for e in events if e["ev"] == "rec"]


def epochs(events: list[Event]) -> list[tuple[Event, int]]:
    """Each record event of one member with its epoch number: the count of
    ownership changes (``assign`` / ``revoke``) the member logged before it."""
    tagged, epoch = [], 0
    for event in events:
        if event["ev"] in ("assign", "revoke"):
            epoch += 1
        elif event["ev"] == "rec":
            tagged.append((event, epoch))
    return tagged


def check_order(members: Mapping[str, list[Event]], ordering: str) -> list[str]:
    """Per key (and per partition with ``partition`` ordering), within each epoch
    of each member, sequence numbers (offsets) must increase strictly. With
    ``none`` ordering there is no order to keep, but a record must still not run
    twice within one epoch of a member."""
    violations = []
    for member, events in members.items():
        last_seq: dict[tuple[int, str, str], int] = {}
        last_offset: dict[tuple[int, str, int], int] = {}
        seen: set[tuple[int, str, int, int]] = set()
        for event, epoch in epochs(events):
            if ordering == "none":
                once = (epoch, event["t"], event["p"], event["o"])
                if once in seen:
                    violations.append(
                        f"{member} epoch {epoch} handled {event['t']}[{event['p']}]@"
                        f"{event['o']} twice"
                    )
                seen.add(once)
                continue
            key = (epoch, event["t"], event["k"])
            if key in last_seq and event["s"] <= last_seq[key]:
                violations.append(
                    f"{member} epoch {epoch} key {event['k']}: seq {event['s']} after "
                    f"{last_seq[key]} ({event['t']}[{event['p']}]@{event['o']})"
                )
            last_seq[key] = event["s"]
            if ordering == "partition":
                pkey = (epoch, event["t"], event["p"])
                if pkey in last_offset and event["o"] <= last_offset[pkey]:
                    violations.append(
                        f"{member} epoch {epoch} {event['t']}[{event['p']}]: offset "
                        f"{event['o']} after {last_offset[pkey]}"
                    )
                last_offset[pkey] = event["o"]
    return violations


class Handled:
    """When each record was first handled (or otherwise completed: ``done``, for
    example dead-lettered records), and, per partition, the latest of those times
    over every known record below an offset (inf when one was never handled)."""

    def __init__(
        self,
        members: Mapping[str, list[Event]],
        produced: Iterable[Produced],
        done: Mapping[tuple[str, int, int], float] | None = None,
    ) -> None:
        first: dict[TP, dict[int, float]] = defaultdict(dict)
        for event in handled_records(members):
            seen = first[(event["t"], event["p"])]
            seen[event["o"]] = min(seen.get(event["o"], event["mono"]), event["mono"])
        for (topic, partition, offset), at in (done or {}).items():
            seen = first[(topic, partition)]
            seen[offset] = min(seen.get(offset, at), at)
        known: dict[TP, set[int]] = defaultdict(set)
        for record in produced:
            known[(record.topic, record.partition)].add(record.offset)
        for tp, seen in first.items():
            known[tp].update(seen)
        self.first = first
        self.prefix: dict[TP, tuple[list[int], list[float]]] = {}
        for tp, offsets in known.items():
            ordered = sorted(offsets)
            latest, times = 0.0, []
            for offset in ordered:
                latest = max(latest, first[tp].get(offset, INF))
                times.append(latest)
            self.prefix[tp] = (ordered, times)

    def at(self, tp: TP, offset: int) -> float:
        """When ``offset`` was first handled (inf: never)."""
        return self.first.get(tp, {}).get(offset, INF)

    def unhandled_below(self, tp: TP, offset: int, at: float) -> list[int]:
        """The known offsets of ``tp`` below ``offset`` not handled by ``at``."""
        ordered, times = self.prefix.get(tp, ([], []))
        below = bisect_left(ordered, offset)
        if not below or times[below - 1] <= at:
            return []
        return [o for o in ordered[:below] if self.at(tp, o) > at]


def check_commits(
    members: Mapping[str, list[Event]],
    produced: Iterable[Produced],
    done: Mapping[tuple[str, int, int], float] | None = None,
) -> tuple[list[str], int, int]:
    """Unsafe commits, the number of successful and of failed commits."""
    handled = Handled(members, produced, done)
    unsafe, ok, failed = [], 0, 0
    for member, events in members.items():
        for event in events:
            if event["ev"] != "commit":
                continue
            if event["error"] is not None:
                failed += 1
                continue
            ok += 1
            for topic, partition, offset in event["offsets"]:
                missing = handled.unhandled_below((topic, partition), offset, event["mono"])
                if missing:
                    unsafe.append(
                        f"{member} committed {topic}[{partition}]@{offset} before handling "
                        f"{len(missing)} records below it, e.g. offsets {missing[:5]}"
                    )
    return unsafe, ok, failed


def check_broker_samples(
    samples: Iterable[BrokerSample], handled: Handled
) -> tuple[list[str], int, int]:
    """Violations in the committed offsets and metadata sampled from the broker; the
    number of committed offsets checked, and of completed offsets read from metadata."""
    violations: list[str] = []
    checked = from_metadata = 0
    last: dict[TP, tuple[int, float]] = {}
    for sample in sorted(samples, key=lambda s: s.mono):
        for tp, (offset, metadata) in sorted(sample.offsets.items()):
            if offset < 0:
                continue
            checked += 1
            missing = handled.unhandled_below(tp, offset, sample.mono)
            if missing:
                violations.append(
                    f"{tp[0]}[{tp[1]}] committed @{offset} at {sample.mono:.3f} with "
                    f"{len(missing)} records below it unhandled, e.g. {missing[:5]}"
                )
            completed = decode_completed(offset, metadata)
            from_metadata += len(completed)
            early = sorted(o for o in completed if handled.at(tp, o) > sample.mono)
            if early:
                violations.append(
                    f"{tp[0]}[{tp[1]}] commit metadata above @{offset} at {sample.mono:.3f} "
                    f"lists {len(early)} records as completed that were not handled, "
                    f"e.g. {early[:5]}"
                )
            if tp in last and offset < last[tp][0]:
                violations.append(
                    f"{tp[0]}[{tp[1]}] committed offset went back from {last[tp][0]} "
                    f"to {offset} at {sample.mono:.3f}"
                )
            last[tp] = (offset, sample.mono)
    return violations, checked, from_metadata


def check(
    produced: list[Produced],
    members: Mapping[str, list[Event]],
    committed: Mapping[TP, int | None],
    ends: Mapping[TP, int],
    ordering: str = "partition",
    samples: Sequence[BrokerSample] = (),
    done: Mapping[tuple[str, int, int], float] | None = None,
) -> Report:
    """Every property at once; the scenario asserts ``not report.problems()`` and
    its bound on ``report.duplicates``. ``done``: records completed without being
    handled (dead-lettered ones), with the time they completed by; they count as
    not lost, and as handled for the safe-commit properties."""
    records = handled_records(members)
    handled = Counter((e["t"], e["p"], e["o"]) for e in records)
    report = Report(produced=len(produced), handled=len(records), distinct=len(handled))
    report.duplicates = report.handled - report.distinct
    finished = done or {}
    report.lost = [
        r
        for r in produced
        if (r.topic, r.partition, r.offset) not in handled
        and (r.topic, r.partition, r.offset) not in finished
    ]
    report.order_violations = check_order(members, ordering)
    report.unsafe_commits, report.commits, report.failed_commits = check_commits(
        members, produced, finished
    )
    report.broker_violations, report.broker_checked, report.metadata_checked = check_broker_samples(
        samples, Handled(members, produced, finished)
    )
    report.broker_samples = len(samples)
    report.commit_regressions = check_commit_regressions(members)
    report.lag = {tp: end - (committed.get(tp) or 0) for tp, end in ends.items()}
    report.rebalances = sum(1 for events in members.values() for e in events if e["ev"] == "assign")
    return report


def duplicate_bound(events: list[Event], at: float | None = None) -> int:
    """What a member that crashed or froze at ``at`` (default: its end) may cause to
    run twice: the records it handled at or above the last offset it saw committed
    for their partition, in the epoch it was in at ``at`` (records it completed but
    had not committed, and, after a freeze, what it still handled before it noticed
    that its partitions had moved)."""
    changes = [e for e in events if e["ev"] in ("assign", "revoke")]
    epoch = len(changes) if at is None else sum(1 for e in changes if e["mono"] < at)
    last_commit: dict[TP, int] = {}  # the last commits it saw up to the end of that epoch
    current = 0
    for event in events:
        if event["ev"] in ("assign", "revoke"):
            current += 1
        elif event["ev"] == "commit" and event["error"] is None and current <= epoch:
            for topic, partition, offset in event["offsets"]:
                tp = (topic, partition)
                last_commit[tp] = max(offset, last_commit.get(tp, 0))
    return sum(
        1
        for event, tagged in epochs(events)
        if tagged == epoch and event["o"] >= last_commit.get((event["t"], event["p"]), 0)
    )


def check_commit_regressions(members: Mapping[str, list[Event]]) -> list[str]:
    """No successful commit may move a partition's committed offset backwards (a late
    commit of a member that lost the partition).

    The ``on_commit`` hook runs when the answer is in, which may be long after the
    broker applied the commit (a member frozen between sending the request and reading
    the answer logs it after its thaw). So a commit of offset ``c`` is placed in time by
    an interval: it was requested after the member handled, in the same ownership, the
    highest record below ``c`` it handled (its records below ``c`` were complete), and
    applied before it was logged. A commit is a regression when another commit of a
    higher offset was logged (applied) before that lower bound. Commits whose order
    cannot be told from the logs are left to the broker-side check, which samples the
    committed offsets themselves (:func:`check_broker_samples`)."""
    commits: dict[TP, list[tuple[float, float | None, int, str]]] = defaultdict(list)
    for member, events in members.items():
        handled: dict[TP, tuple[list[int], dict[int, float]]] = {}  # in the current epoch
        for event in events:
            kind = event["ev"]
            if kind in ("assign", "revoke"):
                handled = {}
            elif kind == "rec":
                tp = (event["t"], event["p"])
                if tp not in handled:
                    handled[tp] = ([], {})
                ordered, times = handled[tp]
                if event["o"] not in times:
                    insort(ordered, event["o"])
                times[event["o"]] = event["mono"]
            elif kind == "commit" and event["error"] is None:
                for topic, partition, offset in event["offsets"]:
                    ordered, times = handled.get((topic, partition), ([], {}))
                    below = bisect_left(ordered, offset)
                    requested_after = times[ordered[below - 1]] if below else None
                    commits[(topic, partition)].append(
                        (event["mono"], requested_after, offset, member)
                    )
    regressions = []
    for (topic, partition), seen in commits.items():
        seen.sort()
        logged = [at for at, _, _, _ in seen]
        highest: list[tuple[int, str]] = []  # the highest offset logged up to each commit
        for _, _, offset, member in seen:
            top = highest[-1] if highest else (-1, "")
            highest.append(max(top, (offset, member)))
        for _, requested_after, offset, member in seen:
            if requested_after is None:
                continue
            before = bisect_left(logged, requested_after)
            if before and highest[before - 1][0] > offset:
                higher, who = highest[before - 1]
                regressions.append(
                    f"{member} committed {topic}[{partition}]@{offset} after {who}'s @{higher}"
                )
    return regressions
