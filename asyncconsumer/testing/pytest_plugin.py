"""pytest plugin: a Kafka-protocol broker for the test session.

``kafka_broker`` (session scope) picks, in order:

1. the address in ``ASYNCCONSUMER_TEST_BOOTSTRAP`` (any running broker);
2. Apache Kafka in a container through testcontainers, when a Docker engine
   answers within a second (set ``ASYNCCONSUMER_TEST_DOCKER=0`` to skip);
3. the embedded Tansu broker.

Tests marked ``@pytest.mark.apache_kafka`` need behaviour the embedded broker
lacks and are skipped on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from ._broker import EmbeddedBroker, create_topic

BOOTSTRAP_ENV = "ASYNCCONSUMER_TEST_BOOTSTRAP"
DOCKER_ENV = "ASYNCCONSUMER_TEST_DOCKER"
KAFKA_IMAGE = "apache/kafka:3.9.1"

BrokerKind = Literal["external", "apache-kafka", "embedded"]


@dataclass(frozen=True)
class KafkaTestBroker:
    bootstrap_servers: str
    kind: BrokerKind

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        await create_topic(self.bootstrap_servers, name, partitions)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "apache_kafka: needs Apache Kafka; skipped on the embedded broker (its known gaps)",
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
    )
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=120)
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaTestBroker]:
    """A running Kafka-protocol broker for the whole session."""
    address = os.environ.get(BOOTSTRAP_ENV)
    if address:
        yield KafkaTestBroker(address, "external")
    elif _docker_answers():
        for bootstrap in _apache_kafka_container():
            yield KafkaTestBroker(bootstrap, "apache-kafka")
    else:
        with EmbeddedBroker() as broker:
            yield KafkaTestBroker(broker.bootstrap_servers, "embedded")


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaTestBroker) -> str:
    """The ``bootstrap_servers`` string of the session's broker."""
    return kafka_broker.bootstrap_servers


@pytest.fixture(autouse=True)
def _skip_without_apache_kafka(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("apache_kafka") is None:
        return
    broker: KafkaTestBroker = request.getfixturevalue("kafka_broker")
    if broker.kind == "embedded":
        pytest.skip("needs Apache Kafka: the embedded broker lacks this (see README, brokers)")
