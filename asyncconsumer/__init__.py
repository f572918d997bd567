"""asyncconsumer: an asyncio-native Kafka consumer framework.

``ConsumerApp`` runs decorator-registered async handlers as a consumer group
member; ``Consumer`` is ``async for msg in consumer``. Both commit only what was
processed (at-least-once), flush offsets before a rebalance takes partitions
away, and commit and leave the group on close.
"""

from ._app import CommitHook, ConsumerApp, Lifespan
from ._codecs import Codec, CodecSpec
from ._consumer import Consumer
from ._errors import (
    AsyncConsumerError,
    AuthenticationError,
    CommitError,
    ConfigurationError,
    ConsumerStoppedError,
    DeadLetterError,
    DeserializationError,
    HandlerCancelledError,
    PublishError,
)
from ._message import Message, TopicPartition
from ._offset_store import OffsetStore
from ._producer import Headers, Producer, ProducerRecord, RecordMetadata, encode
from ._retry import Backoff, Delivery, FailurePolicy, Retry
from ._run import run
from ._runtime._pipeline import DLQ_HEADERS, CallNext, Middleware
from ._security import SASL, TLS, SaslMechanism, Security
from ._seeking import Timestamp
from ._share import ShareConsumer, ShareGroupError, ShareMessage
from ._statistics import HandlerStatistics, ShareStatistics, Statistics, TopicStatistics

__version__ = "0.1.0"

__all__ = [
    "DLQ_HEADERS",
    "SASL",
    "TLS",
    "AsyncConsumerError",
    "AuthenticationError",
    "Backoff",
    "CallNext",
    "Codec",
    "CodecSpec",
    "CommitError",
    "CommitHook",
    "ConfigurationError",
    "Consumer",
    "ConsumerApp",
    "ConsumerStoppedError",
    "DeadLetterError",
    "Delivery",
    "DeserializationError",
    "FailurePolicy",
    "HandlerCancelledError",
    "HandlerStatistics",
    "Headers",
    "Lifespan",
    "Message",
    "Middleware",
    "OffsetStore",
    "Producer",
    "ProducerRecord",
    "PublishError",
    "RecordMetadata",
    "Retry",
    "SaslMechanism",
    "Security",
    "ShareConsumer",
    "ShareGroupError",
    "ShareMessage",
    "ShareStatistics",
    "Statistics",
    "Timestamp",
    "TopicPartition",
    "TopicStatistics",
    "__version__",
    "encode",
    "run",
]
