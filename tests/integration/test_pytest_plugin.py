"""The pytest plugin's broker choice, in pytest subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncconsumer.testing._jars import find_tools

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import pytest

def test_session(kafka_session_broker):
    print("SESSION", kafka_session_broker.kind)

@pytest.mark.apache_kafka
def test_marked(kafka_broker):
    print("MARKED", kafka_broker.kind, kafka_broker.apache_kafka is not None)
"""


def run_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-rs", "-q", "."],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


@pytest.mark.skipif(find_tools() is not None, reason=f"Apache Kafka from Maven: {find_tools()}")
def test_marked_tests_get_apache_kafka_when_the_session_is_embedded(tmp_path: Path) -> None:
    result = run_probe(tmp_path, ASYNCCONSUMER_TEST_BROKER="embedded")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SESSION embedded" in result.stdout
    assert "MARKED apache-kafka True" in result.stdout


def test_marked_tests_skip_with_the_reason_when_no_apache_kafka_can_be_had(
    tmp_path: Path,
) -> None:
    # No java on PATH; the embedded broker needs none.
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_probe(tmp_path, ASYNCCONSUMER_TEST_BROKER="embedded", PATH=str(empty))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SESSION embedded" in result.stdout
    assert "MARKED" not in result.stdout
    assert "SKIPPED" in result.stdout
    assert "needs Apache Kafka" in result.stdout
    assert "no `java` on PATH" in result.stdout


def test_an_unknown_forced_broker_is_a_usage_error(tmp_path: Path) -> None:
    result = run_probe(tmp_path, ASYNCCONSUMER_TEST_BROKER="zookeeper")
    assert result.returncode != 0
    assert "ASYNCCONSUMER_TEST_BROKER must be one of" in result.stdout + result.stderr
