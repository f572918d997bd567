"""asyncconsumer: an asyncio-native Kafka consumer framework.

``ConsumerApp`` runs decorator-registered async handlers as a consumer group
member; ``Consumer`` is ``async for msg in consumer``. Both commit only what was
processed (at-least-once), flush offsets before a rebalance takes partitions
away, and commit and leave the group on close.
"""

from ._app import ConsumerApp, Lifespan
from ._codecs import Codec, CodecSpec
from ._consumer import Consumer
from ._errors import (
    AsyncConsumerError,
    CommitError,
    ConfigurationError,
    ConsumerStoppedError,
    DeserializationError,
)
from ._message import Message, TopicPartition
from ._run import run
from ._statistics import HandlerStatistics, Statistics

__version__ = "0.1.0"

__all__ = [
    "AsyncConsumerError",
    "Codec",
    "CodecSpec",
    "CommitError",
    "ConfigurationError",
    "Consumer",
    "ConsumerApp",
    "ConsumerStoppedError",
    "DeserializationError",
    "HandlerStatistics",
    "Lifespan",
    "Message",
    "Statistics",
    "TopicPartition",
    "__version__",
    "run",
]
