"""The pytest plugin's broker choice, in pytest subprocesses, with and without
pytest-xdist (whose workers share the brokers the controller starts; how the
controller answers them is in tests/unit/test_pytest_plugin.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from asyncconsumer.testing._jars import find_tools

ROOT = Path(__file__).resolve().parents[2]

# Each test writes one line (xdist does not pass a worker's output on, even with -s).
PROBE = """
import os
import pytest

def report(*words):
    with open(os.environ["PROBE_OUT"], "a") as out:
        print(os.environ.get("PYTEST_XDIST_WORKER", "-"), *words, file=out)

@pytest.mark.parametrize("i", range(4))
def test_session(kafka_session_broker, i):
    report("SESSION", kafka_session_broker.kind, kafka_session_broker.bootstrap_servers)

@pytest.mark.apache_kafka
@pytest.mark.parametrize("i", range(2))
def test_marked(kafka_broker, i):
    report("MARKED", kafka_broker.kind, kafka_broker.bootstrap_servers)
"""

XDIST = ["-n", "2"]


def run_probe(tmp_path: Path, *options: str, **env: str) -> tuple[int, str, list[list[str]]]:
    """Run :data:`PROBE` in a pytest subprocess: its exit code, its output and the
    lines the tests reported (``worker what kind address``)."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    out = tmp_path / "probe.out"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q", *options, "."],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PROBE_OUT": str(out), **env},
        capture_output=True,
        text=True,
        timeout=240,  # a whole pytest run, which may start Apache Kafka
        check=False,
    )
    lines = [line.split() for line in out.read_text().splitlines()] if out.exists() else []
    return result.returncode, result.stdout + result.stderr, lines


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def test_xdist_workers_share_the_session_broker_and_it_stops_with_the_run(
    tmp_path: Path,
) -> None:
    code, output, lines = run_probe(
        tmp_path, *XDIST, "-k", "session", ASYNCCONSUMER_TEST_BROKER="embedded"
    )
    assert code == 0, output
    assert len(lines) == 4, lines
    assert {line[0] for line in lines} == {"gw0", "gw1"}, lines  # both workers ran tests
    assert {line[2] for line in lines} == {"embedded"}
    (address,) = {line[3] for line in lines}  # one broker for the run
    assert not listening(address)  # stopped when the run ended


@pytest.mark.skipif(find_tools() is not None, reason=f"Apache Kafka from Maven: {find_tools()}")
@pytest.mark.timeout(300)  # the probe's own timeout (240 s) bounds it
def test_marked_tests_get_apache_kafka_when_the_session_is_embedded(tmp_path: Path) -> None:
    # Under xdist: the controller starts the two brokers, once each, for both workers.
    code, output, lines = run_probe(tmp_path, *XDIST, ASYNCCONSUMER_TEST_BROKER="embedded")
    assert code == 0, output
    session = {(line[2], line[3]) for line in lines if line[1] == "SESSION"}
    marked = {(line[2], line[3]) for line in lines if line[1] == "MARKED"}
    assert len(session) == 1, lines
    assert len(marked) == 1, lines
    assert next(iter(session))[0] == "embedded"
    assert next(iter(marked))[0] == "apache-kafka"
    assert len(lines) == 6, lines


def test_marked_tests_skip_with_the_reason_when_no_apache_kafka_can_be_had(
    tmp_path: Path,
) -> None:
    # No java on PATH; the embedded broker needs none.
    empty = tmp_path / "bin"
    empty.mkdir()
    code, output, lines = run_probe(tmp_path, ASYNCCONSUMER_TEST_BROKER="embedded", PATH=str(empty))
    assert code == 0, output
    assert sorted(line[1:3] for line in lines) == [["SESSION", "embedded"]] * 4
    assert "2 skipped" in output
    assert "needs Apache Kafka" in output
    assert "no `java` on PATH" in output


def test_an_unknown_forced_broker_is_a_usage_error(tmp_path: Path) -> None:
    code, output, lines = run_probe(tmp_path, ASYNCCONSUMER_TEST_BROKER="zookeeper")
    assert code != 0
    assert lines == []
    assert "ASYNCCONSUMER_TEST_BROKER must be one of" in output
