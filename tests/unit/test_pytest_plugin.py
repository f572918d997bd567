"""How the pytest plugin's run-wide brokers are handed out: each started once, on first
use, whoever asks (a thread of this process, or a pytest-xdist worker through the
controller's socket), and a failed start reported to every asker the same way. The
``external`` broker (an address from the environment) starts nothing, and a forced
broker that cannot start fails before anything runs: no broker is needed here."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from asyncconsumer.testing import pytest_plugin
from asyncconsumer.testing.pytest_plugin import KafkaTestBroker, _ask_controller, _Brokers


@pytest.fixture
def brokers() -> Iterator[_Brokers]:
    found = _Brokers()
    yield found
    found.close()


def test_workers_get_the_broker_the_controller_has(
    monkeypatch: pytest.MonkeyPatch, brokers: _Brokers
) -> None:
    monkeypatch.setenv(pytest_plugin.BOOTSTRAP_ENV, "127.0.0.1:19092")
    monkeypatch.delenv(pytest_plugin.BROKER_ENV, raising=False)
    address = brokers.serve()
    assert brokers.serve() == address  # one service for every worker
    found: list[KafkaTestBroker] = []
    askers = [
        threading.Thread(target=lambda: found.append(_ask_controller(address, "session")))
        for _ in range(4)
    ]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(10)
    assert found == [KafkaTestBroker("127.0.0.1:19092", "external")] * 4
    assert brokers.get("session") == found[0]


def test_a_usage_error_reaches_the_worker_as_one(
    monkeypatch: pytest.MonkeyPatch, brokers: _Brokers
) -> None:
    monkeypatch.setenv(pytest_plugin.BROKER_ENV, "zookeeper")
    address = brokers.serve()
    for _ in range(2):  # kept: the second asker gets the same error
        with pytest.raises(pytest.UsageError, match=r"^ASYNCCONSUMER_TEST_BROKER must be one of"):
            _ask_controller(address, "session")


def test_a_broker_that_cannot_start_fails_every_asker_with_its_error(
    monkeypatch: pytest.MonkeyPatch, brokers: _Brokers
) -> None:
    monkeypatch.setenv(pytest_plugin.BROKER_ENV, "embedded")
    monkeypatch.setenv("ASYNCCONSUMER_TANSU_BIN", "/nonexistent/tansu")
    address = brokers.serve()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the session broker, started by pytest-xdist") as e:
            _ask_controller(address, "session")
        assert "/nonexistent/tansu" in str(e.value)
    with pytest.raises(FileNotFoundError):  # in the controller itself: the error as it was
        brokers.get("session")


def test_closing_stops_the_service(brokers: _Brokers) -> None:
    host, port = brokers.serve().rsplit(":", 1)
    brokers.close()
    with pytest.raises(ConnectionRefusedError):
        _ask_controller(f"{host}:{port}", "session")
