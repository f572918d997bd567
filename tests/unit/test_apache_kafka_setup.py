"""ApacheKafka's configuration and jar cache, without starting a broker."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from asyncconsumer.testing import ApacheKafka, ApacheKafkaUnavailableError
from asyncconsumer.testing._apache import cluster_id, node_properties
from asyncconsumer.testing._jars import check_java, find_tools, resolve_jars


def test_single_node_properties() -> None:
    props = node_properties(0, [(9092, 9093)], "/data")
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["log.dirs"] == "/data"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "default.replication.factor",
        "min.insync.replicas",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert int(props["group.min.session.timeout.ms"]) <= 1000
    assert int(props["log.cleaner.dedupe.buffer.size"]) <= 4 * 2**20
    assert "broker.session.timeout.ms" not in props  # Kafka's default on one node


def test_three_node_properties() -> None:
    ports = [(1, 2), (3, 4), (5, 6)]
    all_props = [node_properties(i, ports, f"/d{i}") for i in range(3)]
    assert [p["node.id"] for p in all_props] == ["1", "2", "3"]
    voters = "1@127.0.0.1:2,2@127.0.0.1:4,3@127.0.0.1:6"
    assert {p["controller.quorum.voters"] for p in all_props} == {voters}
    assert all_props[2]["listeners"] == "PLAINTEXT://127.0.0.1:5,CONTROLLER://127.0.0.1:6"
    props = all_props[1]
    assert props["default.replication.factor"] == "3"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert int(props["broker.session.timeout.ms"]) < 9000  # a dead node is fenced quickly


def test_extra_listeners_are_plaintext_and_advertised_where_given() -> None:
    ports = [(1, 2), (3, 4)]
    props = node_properties(1, ports, "/d", {"PROXIED": (7, "127.0.0.1:9001")})
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:3,CONTROLLER://127.0.0.1:4,PROXIED://127.0.0.1:7"
    )
    assert props["advertised.listeners"] == ("PLAINTEXT://127.0.0.1:3,PROXIED://127.0.0.1:9001")
    assert props["listener.security.protocol.map"] == (
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"  # brokers talk directly


def test_extra_listeners_are_checked() -> None:
    with pytest.raises(ValueError, match="one advertised address per node"):
        ApacheKafka(nodes=3, extra_listeners={"PROXIED": ["127.0.0.1:1"]})
    for name in ("proxied", "PLAINTEXT", "CONTROLLER", "A-B"):
        with pytest.raises(ValueError, match="extra listener name"):
            ApacheKafka(extra_listeners={name: ["127.0.0.1:1"]})
    with pytest.raises(RuntimeError, match="not running"):
        ApacheKafka(extra_listeners={"PROXIED": ["127.0.0.1:1"]}).listener_address("PROXIED", 0)


def test_cluster_id_is_a_base64url_uuid() -> None:
    for _ in range(200):
        cid = cluster_id()
        assert len(cid) == 22
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_nodes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="nodes"):
        ApacheKafka(nodes=0)


def _script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ApacheKafkaUnavailableError, match=r"no `java` on PATH") as info:
        check_java()
    assert "install" in str(info.value)
    assert "17" in str(info.value)
    missing = find_tools()
    assert missing is not None
    assert "java" in missing


def test_old_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(tmp_path, "java", "echo 'openjdk version \"1.8.0_392\"' >&2\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ApacheKafkaUnavailableError, match=r"Java 17 or later.*1\.8\.0_392"):
        check_java()


def test_starting_without_java_raises_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "kafka_2.13-4.3.1.jar").touch()
    monkeypatch.setenv("ASYNCCONSUMER_KAFKA_JARS", str(jars))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    kafka = ApacheKafka()
    with pytest.raises(ApacheKafkaUnavailableError, match="java"):
        kafka.start()
    with pytest.raises(RuntimeError, match="not running"):
        _ = kafka.bootstrap_servers


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ASYNCCONSUMER_KAFKA_JARS", raising=False)
    with pytest.raises(ApacheKafkaUnavailableError, match=r"no `mvn` on PATH") as info:
        resolve_jars("4.3.1", cache=tmp_path / "cache")
    assert "ASYNCCONSUMER_KAFKA_JARS" in str(info.value)
    assert not (tmp_path / "cache" / "4.3.1").exists()


# A stand-in for Maven: records each call, then writes the jars (or fails half-way).
FAKE_MVN = """
case "$1" in -v) echo "Apache Maven 3.8.7"; exit 0;; esac
echo call >> "{calls}"
for arg in "$@"; do case "$arg" in -Dkafka.jars=*) out="${{arg#-Dkafka.jars=}}";; esac; done
mkdir -p "$out"
echo partial > "$out/scala-library.jar"
sleep {sleep}
if [ "{fail}" = 1 ]; then echo "[ERROR] Could not resolve dependencies"; exit 1; fi
touch "$out/kafka_2.13-4.3.1.jar"
"""


def _fake_mvn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False, sleep: float = 0
) -> Path:
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir, "mvn", FAKE_MVN.format(calls=calls, sleep=sleep, fail=int(fail)))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ASYNCCONSUMER_KAFKA_JARS", raising=False)
    return calls


def test_failed_resolution_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_mvn(tmp_path, monkeypatch, fail=True)
    cache = tmp_path / "cache"
    with pytest.raises(ApacheKafkaUnavailableError, match=r"(?s)exit code 1.*Could not resolve"):
        resolve_jars("4.3.1", cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == ["4.3.1.lock"]  # no half cache


def test_resolution_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_mvn(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    (cache / "4.3.1.partial-left-by-a-kill").mkdir(parents=True)
    first = resolve_jars("4.3.1", cache=cache)
    assert first == cache / "4.3.1"
    assert (first / "kafka_2.13-4.3.1.jar").is_file()
    assert resolve_jars("4.3.1", cache=cache) == first
    assert calls.read_text().count("call") == 1
    assert sorted(p.name for p in cache.iterdir()) == ["4.3.1", "4.3.1.lock"]


def test_parallel_processes_resolve_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_mvn(tmp_path, monkeypatch, sleep=1)
    cache = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path;"
        "from asyncconsumer.testing._jars import resolve_jars;"
        "print(resolve_jars('4.3.1', cache=Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0]
    assert set(outputs) == {str(cache / "4.3.1")}
    assert calls.read_text().count("call") == 1


def test_only_a_lost_port_of_our_choosing_is_retried() -> None:
    lost = ApacheKafkaUnavailableError("... Socket server failed to bind: Address already in use")
    other = ApacheKafkaUnavailableError("... exited with code 1: Invalid value")
    assert ApacheKafka()._port_taken(lost)
    assert not ApacheKafka()._port_taken(other)
    given = ApacheKafka(properties={"listeners": "PLAINTEXT://127.0.0.1:9092"})
    assert not given._port_taken(lost)  # the caller's port: a retry would not help
