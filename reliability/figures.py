"""The figures table of docs/reliability.md, from the last full ``make chaos`` run.

``python -m reliability.figures`` prints the table; ``--write`` replaces it in
docs/reliability.md (between the ``figures:start`` and ``figures:end`` markers).
Runs are read from ``.chaos-results.jsonl``: each run appends a start line (with its
``-m`` / ``-k`` selection), one or more lines of figures per test, and an end line.
The last run that selected everything (``make chaos``) and finished is used, or
``--run ID``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .harness import RESULTS, ROOT

DOC = ROOT / "docs" / "reliability.md"
START = "<!-- figures:start (python -m reliability.figures --write) -->"
END = "<!-- figures:end -->"

# Scenario name -> (what happens, what is asserted), in the table's order.
SCENARIOS: dict[str, tuple[str, str]] = {
    "self-test-loss": (
        "0. self-test: members complete every 1,000th record without handling it",
        "the checker reports exactly those records lost, and the commits past them unsafe",
    ),
    "rolling-restart": (
        "1. rolling restart: each member in turn gets SIGTERM and is started again",
        "no loss, order, safe commits, **zero duplicates**",
    ),
    "sigkill-member": (
        "2. SIGKILL of one member of 3 (not restarted)",
        "no loss, order, safe commits; duplicates at most what it had completed above the "
        "last commit it saw, all of them its records",
    ),
    "scale-1-3-1": (
        "3. scale 1 -> 3 -> 1: two members join, then get SIGTERM",
        "no loss, order, safe commits, **zero duplicates**; the first member ends with "
        "every partition",
    ),
    "sigstop-member": (
        "4. SIGSTOP of one member past its session timeout, SIGCONT once its partitions moved",
        "as 2 (the bound includes what it handled after SIGCONT, before it noticed), no "
        "committed offset moves backwards, it rejoins in the same process",
    ),
    "proxy-cut-resume": (
        "5. one member cut from the cluster by the proxy (blackhole: its sockets stay open, "
        "nothing is forwarded) past its session timeout, then forwarded again (the "
        "requests and answers that waited are delivered)",
        "as 4",
    ),
    "proxy-cut-reset": (
        "5. the same, but its connections are reset when the proxy forwards again",
        "as 4",
    ),
    "broker-kill-leader": (
        "6. SIGKILL of the broker node leading most partitions, restarted 5 s later",
        "no loss, order, safe commits; no member exits or restarts",
    ),
    "broker-kill-coordinator": (
        "6. the same, the group coordinator's node",
        "the same",
    ),
    "slow-handler": (
        "7. `max_poll_interval_ms=2000`, every 500th offset takes 4 s",
        "no loss, order, safe commits, zero duplicates, **no rebalance**",
    ),
    "poison-and-dlq": (
        "8. 1 % poison pills, 20 % of records failing (half once, half on every attempt), "
        '`Retry(attempts=3)`, `on_failure="dead_letter"`, during a rolling restart, '
        "500 records/s",
        "each record handled or dead-lettered **exactly once**, as the policy says (the "
        "dead-letter topic read back: attempts, exception type, key); no loss, order, "
        "safe commits, zero duplicates",
    ),
    "share-broker-kill": (
        "10. share group (`@app.share_handler`, 3 members, lock 5 s): SIGKILL of the broker "
        "node leading most partitions, restarted 5 s later",
        "every record handled and accepted; nothing delivered for a lock duration after "
        "all were (none left acquired); duplicates only among the records first handled "
        "from 2 s before the kill to the end of the fail-over (their number: the bound); "
        "no member exits",
    ),
    "sustained-load": (
        "sustained load: 3 members, 2,000 records/s for 60 s, no fault",
        "lag at most 10,000 (5 s of production) throughout, zero after; each member's "
        "RSS grows at most 16 MiB after the first 15 s; no loss, zero duplicates, key order",
    ),
}
NINE = {"rolling-restart", "sigkill-member", "sigstop-member"}
ORDERINGS = {"partition": 0, "key": 1, "none": 2}


def load(path: Path = RESULTS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


def last_full_run(lines: Iterable[dict[str, Any]]) -> str | None:
    """The id of the last run that selected every test (``make chaos``: the whole
    ``reliability`` folder, no ``-m`` or ``-k``) and finished."""
    full, finished = [], set()
    for line in lines:
        if (
            line.get("event") == "start"
            and not line.get("markexpr")
            and not line.get("keyword")
            and [arg.rstrip("/") for arg in line.get("args", [])] == ["reliability"]
        ):
            full.append(line["run"])
        elif line.get("event") == "end":
            finished.add(line["run"])
    done = [run for run in full if run in finished]
    return done[-1] if done else None


def tests_of(lines: Iterable[dict[str, Any]], run: str) -> dict[str, dict[str, Any]]:
    """The figures of each test of ``run``, its lines merged in order."""
    merged: dict[str, dict[str, Any]] = defaultdict(dict)
    for line in lines:
        if line.get("run") == run and "scenario" in line:
            merged[line.get("test", "")].update(line)
    return dict(merged)


def _n(value: float) -> str:
    return f"{value:,}"


def _ordering(figures: dict[str, Any]) -> str:
    ordering = figures.get("ordering", "partition")
    if ordering == "partition":
        return "`partition`"
    text = f"`{ordering}`, concurrency {figures.get('concurrency') or 100}"
    if figures["scenario"] in NINE and figures.get("keys", 50) != 50:
        text = (
            f"**9.** {text}, {figures['keys']} keys, handlers of "
            f"0-{2 * figures.get('work_ms', 1)} ms"
        )
    return text


def _seen(figures: dict[str, Any]) -> str:
    if figures["scenario"] == "sustained-load" and "max_lag" in figures:
        growth = max(figures["rss_growth_mib"].values())
        rss = max(figures["rss_mib"].values())
        return (
            f"; seen: lag {_n(figures['median_lag'])} (median) to "
            f"{_n(figures['max_lag'])}, RSS {rss} MiB, growth at most {growth} MiB"
        )
    if figures["scenario"] == "poison-and-dlq" and "fates" in figures:
        fates = figures["fates"]
        return (
            f"; seen: {_n(fates.get('ok', 0))} handled at once, "
            f"{_n(fates.get('transient', 0))} after a retry, "
            f"{_n(fates.get('permanent', 0))} failing ones and "
            f"{_n(fates.get('poison', 0))} poison pills dead-lettered"
        )
    if figures["scenario"] == "self-test-loss":
        return f"; seen: {_n(figures['lost'])} lost"
    return ""


def table(tests: dict[str, dict[str, Any]]) -> list[str]:
    order = list(SCENARIOS)
    rows = sorted(
        (f for f in tests.values() if f["scenario"] in SCENARIOS),
        key=lambda f: (order.index(f["scenario"]), ORDERINGS.get(f.get("ordering", ""), 9)),
    )
    out = [
        "| scenario | `ordering` | asserted | records | duplicates (bound) | longest stall "
        "of a partition | lag zero after the producer stopped | broker samples: committed "
        "offsets checked (completed offsets in their metadata) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    previous = None
    for figures in rows:
        name = figures["scenario"]
        what, asserted = SCENARIOS[name]
        if name == previous:
            what, asserted = "", "the same"
        previous = name
        duplicates = _n(figures["duplicates"])
        if "duplicate_bound" in figures:
            duplicates += f" ({_n(figures['duplicate_bound'])})"
        broker = (
            f"{_n(figures.get('broker_checked', 0))} ({_n(figures.get('metadata_checked', 0))})"
        )
        out.append(
            f"| {what} | {_ordering(figures)} | {asserted}{_seen(figures)} | "
            f"{_n(figures['produced'])} | {duplicates} | {figures['max_stall_s']:.1f} s | "
            f"{figures['drain_s']:.1f} s | {broker} |"
        )
    return out


def block(lines: list[dict[str, Any]], run: str) -> str:
    starts = [line for line in lines if line.get("run") == run and line.get("event") == "start"]
    ends = [line for line in lines if line.get("run") == run and line.get("event") == "end"]
    tests = tests_of(lines, run)
    when = time.strftime("%Y-%m-%d", time.gmtime(starts[0]["wall"])) if starts else "?"
    head = f"Figures from the `make chaos` run `{run}` ({when})"
    if ends:
        end = ends[-1]
        minutes, seconds = divmod(int(end["duration_s"]), 60)
        status = "passed" if end["exitstatus"] == 0 else f"**{end['failed']} failed**"
        head += (
            f": {end['tests']} tests (of which {len(tests)} with figures), {status}, "
            f"{minutes} min {seconds:02d} s with the cluster's start"
        )
    return "\n".join([START, "", head + ".", "", *table(tests), "", END])


def write(text: str, doc: Path = DOC) -> None:
    content = doc.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{doc} has no {START} ... {END} block")
    before, rest = content.split(START, 1)
    _, after = rest.split(END, 1)
    doc.write_text(before + text + after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.figures", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC.name}")
    parser.add_argument("--run", help="a run id instead of the last full run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lines = load(args.results)
    run = args.run or last_full_run(lines)
    if run is None:
        print(f"no finished full `make chaos` run in {args.results}", file=sys.stderr)
        return 1
    text = block(lines, run)
    if args.write:
        write(text)
        print(f"wrote the figures of run {run} into {DOC}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
