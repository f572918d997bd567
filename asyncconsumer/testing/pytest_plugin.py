"""pytest plugin: a Kafka-protocol broker for the test session, and ``memory_kafka``.

The session's broker (``kafka_session_broker``) is, in order:

1. the address in ``ASYNCCONSUMER_TEST_BOOTSTRAP`` (any running broker: ``external``);
2. Apache Kafka in a container through testcontainers, when a Docker engine
   answers within a second (``docker``; ``ASYNCCONSUMER_TEST_DOCKER=0`` skips it);
3. Apache Kafka from Maven Central (:class:`ApacheKafka`), when ``java`` >= 17 and
   ``mvn`` (or the cached jars) are there (``apache-kafka``);
4. the embedded Tansu broker (``embedded``).

``ASYNCCONSUMER_TEST_BROKER=embedded|apache-kafka|docker`` forces one (an error,
not a fall-back, when it cannot start). ``ASYNCCONSUMER_KAFKA_VERSION`` picks the
Apache Kafka version.

Tests marked ``@pytest.mark.apache_kafka`` need Apache Kafka: their ``kafka_broker``
is the session broker when that is Apache Kafka (or ``external``), otherwise an
Apache Kafka from Maven started for them once per session; they are skipped, with
the reason, only when neither can be had.

Each broker starts on first use and stops when the run ends. Under pytest-xdist
(``pytest -n 4``) the run still has one of each: the controller process starts it
when a worker first asks (over a loopback socket whose address it hands to the
workers) and stops it after the last worker ended, so the workers share one broker
instead of starting one each; tests must then name their topics and groups uniquely.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import pytest

from .._transport._memory import MemoryKafka
from ._apache import ApacheKafka
from ._broker import EmbeddedBroker, create_topic
from ._jars import DEFAULT_VERSION, find_tools

BOOTSTRAP_ENV = "ASYNCCONSUMER_TEST_BOOTSTRAP"
BROKER_ENV = "ASYNCCONSUMER_TEST_BROKER"
DOCKER_ENV = "ASYNCCONSUMER_TEST_DOCKER"
VERSION_ENV = "ASYNCCONSUMER_KAFKA_VERSION"
KAFKA_IMAGE = "apache/kafka:3.9.1"  # as docker-compose.yml

BrokerKind = Literal["external", "docker", "apache-kafka", "embedded"]
KINDS: tuple[str, ...] = ("embedded", "apache-kafka", "docker")

# What a test run can ask for: its session's broker, or Apache Kafka from Maven for the
# tests marked apache_kafka when the session's broker is not Apache Kafka.
Role = Literal["session", "apache-kafka"]
SERVICE_KEY = "asyncconsumer_brokers"  # the controller's address, in xdist's workerinput


@dataclass(frozen=True)
class KafkaTestBroker:
    """A running broker: its address, its ``kind``, and for ``apache-kafka`` the
    :class:`ApacheKafka` that runs it (do not stop the session's nodes: fault
    tests start their own ``ApacheKafka``)."""

    bootstrap_servers: str
    kind: BrokerKind
    apache_kafka: ApacheKafka | None = None  # None in pytest-xdist workers: not their process

    @property
    def is_apache_kafka(self) -> bool:
        """Apache Kafka for sure (``external`` brokers are assumed to be, too)."""
        return self.kind != "embedded"

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        await create_topic(self.bootstrap_servers, name, partitions)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BROKERS] = _Brokers()
    config.addinivalue_line(
        "markers",
        "apache_kafka: needs Apache Kafka (what the embedded broker lacks); runs on an "
        "Apache Kafka from Maven when the session's broker is the embedded one",
    )


def _docker_answers() -> bool:
    if os.environ.get(DOCKER_ENV, "1") == "0":
        return False
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    try:
        import docker

        docker.from_env(timeout=1).ping()
    except Exception:
        return False
    return True


def _apache_kafka_container() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    from ._broker import _free_port

    port = _free_port("127.0.0.1")
    container = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        )
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "1000")
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=120)
        yield f"127.0.0.1:{port}"


def _maven_kafka() -> Iterator[KafkaTestBroker]:
    with ApacheKafka(version=os.environ.get(VERSION_ENV, DEFAULT_VERSION)) as kafka:
        yield KafkaTestBroker(kafka.bootstrap_servers, "apache-kafka", kafka)


def _session_broker() -> Iterator[KafkaTestBroker]:
    address = os.environ.get(BOOTSTRAP_ENV)
    forced = os.environ.get(BROKER_ENV, "")
    if forced and forced not in KINDS:
        raise pytest.UsageError(f"{BROKER_ENV} must be one of {', '.join(KINDS)}, not {forced!r}")
    if address and not forced:
        yield KafkaTestBroker(address, "external")
    elif forced == "docker" or (not forced and _docker_answers()):
        for bootstrap in _apache_kafka_container():
            yield KafkaTestBroker(bootstrap, "docker")
    elif forced == "apache-kafka" or (not forced and find_tools() is None):
        yield from _maven_kafka()
    else:
        with EmbeddedBroker() as broker:
            yield KafkaTestBroker(broker.bootstrap_servers, "embedded")


# -- the run's brokers: started on first use, stopped at the end of the run ----------------


class _Brokers:
    """The run's brokers, each started once, on first use (by whichever thread asks
    first; the others wait for it), and all stopped by :meth:`close`. A start that
    failed fails every later request the same way."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self._started: dict[Role, KafkaTestBroker | BaseException] = {}
        self._service: _BrokerService | None = None

    def get(self, role: Role) -> KafkaTestBroker:
        with self._lock:
            if role not in self._started:
                start = _session_broker if role == "session" else _maven_kafka
                try:
                    broker = self._stack.enter_context(contextlib.contextmanager(start)())
                    self._started[role] = broker
                except Exception as exc:  # kept: every test that asks gets the error
                    self._started[role] = exc
            found = self._started[role]
        if isinstance(found, BaseException):
            raise found
        return found

    def serve(self) -> str:
        """The ``host:port`` where pytest-xdist workers ask for these brokers."""
        with self._lock:
            if self._service is None:
                self._service = _BrokerService(self.get)
            return self._service.address

    def close(self) -> None:
        with self._lock:
            service, self._service = self._service, None
            self._started.clear()
        if service is not None:
            service.close()
        self._stack.close()


class _BrokerService(socketserver.ThreadingTCPServer):
    """The controller's side under pytest-xdist: a worker sends a role (one line) and
    reads back one JSON line, the broker (``bootstrap_servers``, ``kind``) or the
    error that starting it raised."""

    daemon_threads = True

    def __init__(self, get: Callable[[Role], KafkaTestBroker]) -> None:
        super().__init__(("127.0.0.1", 0), _BrokerRequest)
        self.get = get
        self._thread = threading.Thread(
            target=self.serve_forever, daemon=True, name="asyncconsumer-pytest-brokers"
        )
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


class _BrokerRequest(socketserver.StreamRequestHandler):
    server: _BrokerService

    def handle(self) -> None:
        role = self.rfile.readline().decode().strip()
        answer: dict[str, Any]
        try:
            if role not in ("session", "apache-kafka"):
                raise RuntimeError(f"unknown broker role {role!r}")
            broker = self.server.get(cast(Role, role))
            answer = {"bootstrap_servers": broker.bootstrap_servers, "kind": broker.kind}
        except pytest.UsageError as exc:
            answer = {"error": str(exc), "usage": True}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}", "usage": False}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


def _ask_controller(address: str, role: Role) -> KafkaTestBroker:
    """A pytest-xdist worker's request for one of the run's brokers."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:  # no timeout: jars may download
        sock.sendall(role.encode() + b"\n")
        with sock.makefile("rb") as answer:
            reply = json.loads(answer.readline() or b"{}")
    if "bootstrap_servers" in reply:
        return KafkaTestBroker(reply["bootstrap_servers"], reply["kind"])
    if reply.get("usage"):
        raise pytest.UsageError(reply["error"])
    raise RuntimeError(
        f"the {role} broker, started by pytest-xdist's controller, failed: "
        f"{reply.get('error', 'no answer')}"
    )


_BROKERS = pytest.StashKey[_Brokers]()


def _broker(config: pytest.Config, role: Role) -> KafkaTestBroker:
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    if SERVICE_KEY in workerinput:
        return _ask_controller(workerinput[SERVICE_KEY], role)
    return config.stash[_BROKERS].get(role)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist's controller, before it starts a worker: tell it where to ask."""
    node.workerinput[SERVICE_KEY] = node.config.stash[_BROKERS].serve()


def pytest_unconfigure(config: pytest.Config) -> None:
    brokers = config.stash.get(_BROKERS, None)
    if brokers is not None:
        brokers.close()


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_session_broker(pytestconfig: pytest.Config) -> KafkaTestBroker:
    """The session's broker, chosen as the module docstring says (session scope:
    what session-scoped fixtures of yours should depend on)."""
    return _broker(pytestconfig, "session")


@pytest.fixture(scope="session")
def apache_kafka_broker(
    pytestconfig: pytest.Config, kafka_session_broker: KafkaTestBroker
) -> KafkaTestBroker:
    """An Apache Kafka broker: the session's when it is one, else one from Maven
    started on first use (skips with the reason when neither can be had)."""
    if kafka_session_broker.is_apache_kafka:
        return kafka_session_broker
    missing = find_tools()
    if missing is not None:
        pytest.skip(f"needs Apache Kafka, and none can be had here: {missing}")
    return _broker(pytestconfig, "apache-kafka")


@pytest.fixture
def memory_kafka() -> MemoryKafka:
    """A new :class:`~asyncconsumer.testing.MemoryKafka` for this test: pass it to
    ``TestClient(app, memory_kafka)``, or ``memory_kafka.bootstrap_servers``
    (``memory://<name>``) to a ``Consumer`` or ``ConsumerApp``."""
    return MemoryKafka()


@pytest.fixture
def kafka_broker(request: pytest.FixtureRequest) -> KafkaTestBroker:
    """The broker for this test: the session's, or Apache Kafka for tests marked
    ``apache_kafka``."""
    name = "kafka_session_broker"
    if request.node.get_closest_marker("apache_kafka") is not None:
        name = "apache_kafka_broker"
    broker: KafkaTestBroker = request.getfixturevalue(name)
    return broker


@pytest.fixture
def kafka_bootstrap(kafka_broker: KafkaTestBroker) -> str:
    """The ``bootstrap_servers`` string of this test's broker."""
    return kafka_broker.bootstrap_servers


@pytest.fixture(autouse=True)
def _apache_kafka_marker(request: pytest.FixtureRequest) -> None:
    # A marked test that uses no broker fixture is still skipped where none can be had.
    if request.node.get_closest_marker("apache_kafka") is not None:
        request.getfixturevalue("apache_kafka_broker")
