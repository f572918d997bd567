"""Test and development helpers: an embedded Kafka-protocol broker, topic
creation, and a pytest plugin (fixtures ``kafka_broker`` and ``kafka_bootstrap``)."""

from ._broker import EmbeddedBroker, create_topic

__all__ = ["EmbeddedBroker", "create_topic"]
