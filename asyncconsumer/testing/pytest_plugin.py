"""pytest plugin: a Kafka-protocol broker for the test session.

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
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

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


@dataclass(frozen=True)
class KafkaTestBroker:
    """A running broker: its address, its ``kind``, and for ``apache-kafka`` the
    :class:`ApacheKafka` that runs it (do not stop the session's nodes: fault
    tests start their own ``ApacheKafka``)."""

    bootstrap_servers: str
    kind: BrokerKind
    apache_kafka: ApacheKafka | None = None

    @property
    def is_apache_kafka(self) -> bool:
        """Apache Kafka for sure (``external`` brokers are assumed to be, too)."""
        return self.kind != "embedded"

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        await create_topic(self.bootstrap_servers, name, partitions)


def pytest_configure(config: pytest.Config) -> None:
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


@pytest.fixture(scope="session")
def kafka_session_broker() -> Iterator[KafkaTestBroker]:
    """The session's broker, chosen as the module docstring says (session scope:
    what session-scoped fixtures of yours should depend on)."""
    yield from _session_broker()


@pytest.fixture(scope="session")
def apache_kafka_broker(kafka_session_broker: KafkaTestBroker) -> Iterator[KafkaTestBroker]:
    """An Apache Kafka broker: the session's when it is one, else one from Maven
    started on first use (skips with the reason when neither can be had)."""
    if kafka_session_broker.is_apache_kafka:
        yield kafka_session_broker
        return
    missing = find_tools()
    if missing is not None:
        pytest.skip(f"needs Apache Kafka, and none can be had here: {missing}")
    yield from _maven_kafka()


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
