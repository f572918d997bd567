"""Test and development helpers: :class:`MemoryKafka` (a Kafka cluster in memory) and
:class:`TestClient` (runs an app against it), the embedded broker, Apache Kafka from
Maven Central, topic creation, and a pytest plugin (fixtures ``memory_kafka``,
``kafka_broker`` and ``kafka_bootstrap``)."""

from .._transport._memory import MemoryKafka
from ._apache import ApacheKafka, BrokerSecurity
from ._broker import EmbeddedBroker, create_topic
from ._client import TestClient
from ._jars import ApacheKafkaUnavailableError
from ._tls import CertificateFiles, make_certificates

__all__ = [
    "ApacheKafka",
    "ApacheKafkaUnavailableError",
    "BrokerSecurity",
    "CertificateFiles",
    "EmbeddedBroker",
    "MemoryKafka",
    "TestClient",
    "create_topic",
    "make_certificates",
]
