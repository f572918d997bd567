"""Proves delivery properties from the member logs, the producer's acknowledgements
and the broker's committed and end offsets.

- **no loss**: every acknowledged record was handled at least once;
- **order**: per key, within each continuous ownership, the handled sequence numbers
  increase strictly (with ``ordering="partition"``, the offsets per partition too).
  A continuous ownership (an *epoch*) of a partition by a member runs from an
  ``assign`` event of that member that names the partition to its next ``assign`` or
  ``revoke`` event, or the end of its log (a crash);
- **safe commits**: every offset a successful ``on_commit`` reported was handled,
  with every known record below it in its partition, before the commit was logged;
- **monotonic commits**: successful commits of a partition, in time order, never
  move its offset backwards;
- **duplicates**: handled records minus distinct handled records (scenarios bound it);
- **progress**: the committed offset of every partition equals its end offset.
"""

from __future__ import annotations

import itertools
import json
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
        lagging = {tp: n for tp, n in self.lag.items() if n}
        if lagging:
            found.append(f"lag not zero: {lagging}")
        return found

    def summary(self) -> str:
        return (
            f"produced={self.produced} handled={self.handled} distinct={self.distinct} "
            f"duplicates={self.duplicates} lost={len(self.lost)} commits={self.commits} "
            f"failed_commits={self.failed_commits} assignments={self.rebalances}"
        )


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
    of each member, sequence numbers (offsets) must increase strictly."""
    violations = []
    for member, events in members.items():
        last_seq: dict[tuple[int, str, str], int] = {}
        last_offset: dict[tuple[int, str, int], int] = {}
        for event, epoch in epochs(events):
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


def check_commits(
    members: Mapping[str, list[Event]], produced: Iterable[Produced]
) -> tuple[list[str], int, int]:
    """Unsafe commits, the number of successful and of failed commits."""
    first: dict[TP, dict[int, float]] = defaultdict(dict)
    for event in handled_records(members):
        seen = first[(event["t"], event["p"])]
        seen[event["o"]] = min(seen.get(event["o"], event["mono"]), event["mono"])
    known: dict[TP, set[int]] = defaultdict(set)
    for record in produced:
        known[(record.topic, record.partition)].add(record.offset)
    for tp, seen in first.items():
        known[tp].update(seen)
    # prefix[tp][n]: the latest first-handling time of the known offsets below n
    # (inf when one of them was never handled).
    prefix: dict[TP, tuple[list[int], list[float]]] = {}
    for tp, offsets in known.items():
        ordered = sorted(offsets)
        latest, times = 0.0, []
        for offset in ordered:
            latest = max(latest, first[tp].get(offset, INF))
            times.append(latest)
        prefix[tp] = (ordered, times)
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
                ordered, times = prefix.get((topic, partition), ([], []))
                below = bisect_left(ordered, offset)
                if below and times[below - 1] > event["mono"]:
                    handled_at = first[(topic, partition)]
                    missing = [o for o in ordered[:below] if handled_at.get(o, INF) > event["mono"]]
                    unsafe.append(
                        f"{member} committed {topic}[{partition}]@{offset} before handling "
                        f"{len(missing)} records below it, e.g. offsets {missing[:5]}"
                    )
    return unsafe, ok, failed


def check(
    produced: list[Produced],
    members: Mapping[str, list[Event]],
    committed: Mapping[TP, int | None],
    ends: Mapping[TP, int],
    ordering: str = "partition",
) -> Report:
    """Every property at once; the scenario asserts ``not report.problems()`` and
    its bound on ``report.duplicates``."""
    records = handled_records(members)
    handled = Counter((e["t"], e["p"], e["o"]) for e in records)
    report = Report(produced=len(produced), handled=len(records), distinct=len(handled))
    report.duplicates = report.handled - report.distinct
    report.lost = [r for r in produced if (r.topic, r.partition, r.offset) not in handled]
    report.order_violations = check_order(members, ordering)
    report.unsafe_commits, report.commits, report.failed_commits = check_commits(members, produced)
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
    """Successful commits of a partition, by any member, in time order, must never
    move its committed offset backwards (a late commit of a member that lost it)."""
    commits: dict[TP, list[tuple[float, int, str]]] = defaultdict(list)
    for member, events in members.items():
        for event in events:
            if event["ev"] == "commit" and event["error"] is None:
                for topic, partition, offset in event["offsets"]:
                    commits[(topic, partition)].append((event["mono"], offset, member))
    regressions = []
    for (topic, partition), seen in commits.items():
        seen.sort()
        for (_, before, who), (_, after, member) in itertools.pairwise(seen):
            if after < before:
                regressions.append(
                    f"{member} committed {topic}[{partition}]@{after} after {who}'s @{before}"
                )
    return regressions
