"""reliability.figures on a synthetic results file: it takes the last full run, merges
each test's lines and writes the table between its markers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from . import figures

pytestmark = pytest.mark.chaos_quick


def _figures(test: str, run: str, scenario: str, **extra: Any) -> dict[str, Any]:
    return {"run": run, "test": test, "scenario": scenario, "ordering": "partition",
            "produced": 12100, "duplicates": 62, "max_stall_s": 6.04, "drain_s": 0.61,
            "broker_checked": 144, "metadata_checked": 0, **extra}  # fmt: skip


def _results(path: Path) -> Path:
    lines = [
        {
            "run": "a",
            "event": "start",
            "wall": 0,
            "markexpr": "",
            "keyword": "",
            "args": ["reliability"],
        },
        _figures("t::kill[partition]", "a", "sigkill-member", duplicates=1),
        {"run": "a", "event": "end", "exitstatus": 0, "tests": 1, "failed": 0, "duration_s": 60},
        {
            "run": "b",
            "event": "start",
            "wall": 86400,
            "markexpr": "",
            "keyword": "",
            "args": ["reliability/"],
        },
        _figures(
            "t::kill[key]",
            "b",
            "sigkill-member",
            ordering="key",
            concurrency=100,
            keys=500,
            work_ms=100,
        ),
        _figures("t::kill[partition]", "b", "sigkill-member"),
        {
            "run": "b",
            "test": "t::kill[partition]",
            "scenario": "sigkill-member",
            "duplicate_bound": 62,
        },
        _figures("t::roll[partition]", "b", "rolling-restart", duplicates=0),
        {
            "run": "b",
            "event": "end",
            "exitstatus": 1,
            "tests": 4,
            "failed": 1,
            "duration_s": 275.3,
        },
        {
            "run": "c",
            "event": "start",
            "wall": 2 * 86400,
            "markexpr": "chaos_quick",
            "keyword": "",
        },
        _figures("t::roll[partition]", "c", "rolling-restart"),
        {"run": "c", "event": "end", "exitstatus": 0, "tests": 1, "failed": 0, "duration_s": 9},
        {
            "run": "d",
            "event": "start",
            "wall": 3 * 86400,
            "markexpr": "",
            "keyword": "",
            "args": ["reliability/test_figures.py"],
        },
        {"run": "d", "event": "end", "exitstatus": 0, "tests": 3, "failed": 0, "duration_s": 1},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_the_last_full_finished_run_is_used(tmp_path: Path) -> None:
    lines = figures.load(_results(tmp_path / "r.jsonl"))
    assert figures.last_full_run(lines) == "b"  # c is chaos-quick, d one module


def test_the_table_merges_a_tests_lines_and_orders_the_rows(tmp_path: Path) -> None:
    lines = figures.load(_results(tmp_path / "r.jsonl"))
    text = figures.block(lines, "b")
    assert (
        "run `b` (1970-01-02): 4 tests (of which 3 with figures), **1 failed**, 4 min 35 s" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3
    assert rows[0].startswith("| 1. rolling restart")
    assert rows[1].startswith("| 2. SIGKILL")
    assert "| 62 (62) |" in rows[1]
    assert "| 6.0 s | 0.6 s | 144 (0) |" in rows[1]
    assert rows[2].startswith("|  | **9.** `key`, concurrency 100, 500 keys, handlers of 0-200 ms")
    assert "| the same |" in rows[2]


def test_write_replaces_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{figures.START}\nold\n{figures.END}\nafter\n")
    figures.write(f"{figures.START}\nnew\n{figures.END}", doc)
    assert doc.read_text() == f"before\n{figures.START}\nnew\n{figures.END}\nafter\n"
