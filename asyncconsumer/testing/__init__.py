"""Test and development helpers: the embedded broker, Apache Kafka from Maven
Central, topic creation, and a pytest plugin (fixtures ``kafka_broker`` and
``kafka_bootstrap``)."""

from ._apache import ApacheKafka, BrokerSecurity
from ._broker import EmbeddedBroker, create_topic
from ._jars import ApacheKafkaUnavailableError
from ._tls import CertificateFiles, make_certificates

__all__ = [
    "ApacheKafka",
    "ApacheKafkaUnavailableError",
    "BrokerSecurity",
    "CertificateFiles",
    "EmbeddedBroker",
    "create_topic",
    "make_certificates",
]
