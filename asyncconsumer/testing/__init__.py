"""Test and development helpers: the embedded broker, Apache Kafka from Maven
Central, topic creation, and a pytest plugin (fixtures ``kafka_broker`` and
``kafka_bootstrap``)."""

from ._apache import ApacheKafka
from ._broker import EmbeddedBroker, create_topic
from ._jars import ApacheKafkaUnavailableError

__all__ = ["ApacheKafka", "ApacheKafkaUnavailableError", "EmbeddedBroker", "create_topic"]
