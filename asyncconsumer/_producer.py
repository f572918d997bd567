"""The app's producer: :class:`Producer` (a producer client, started with the app) and
:class:`ProducerRecord` (what a ``publish_to`` handler may return)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from aiokafka.structs import RecordMetadata

from ._errors import ConfigurationError, ConsumerStoppedError
from ._security import Security, check_security, redact_options
from ._transport import ProducerClient, Transport, transport_for
from ._transport._aiokafka import PRODUCER_OPTIONS

if TYPE_CHECKING:
    from ._runtime._pipeline import TopicCounters

__all__ = ["Headers", "Producer", "ProducerRecord", "RecordMetadata", "encode"]

Headers: TypeAlias = Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]]
"""Record headers: a mapping or a sequence of ``(name, value)`` pairs; ``str`` values
are UTF-8 encoded."""

_OWNED = {
    "key_serializer": "keys and values are encoded by type (see asyncconsumer.encode)",
    "value_serializer": "keys and values are encoded by type (see asyncconsumer.encode)",
    "loop": "the running event loop is used",
    "bootstrap_servers": "the app's bootstrap_servers are used",
    "transactional_id": "delivery='exactly_once' handlers run one transactional producer "
    "per input partition",
}

TRANSACTION_LINGER_MS = 5
TRANSACTION_RETRY_BACKOFF_MS = 10


class Transaction(Protocol):
    """What the app's producer needs of a partition's open transaction."""

    @property
    def client(self) -> ProducerClient:
        """The partition's transactional producer."""

    @property
    def outcomes(self) -> TopicCounters:
        """What became of the transaction's records (handled, dead-lettered, ...),
        counted into the topic's totals when it commits, dropped when it aborts
        (its records run again)."""

    def sent(self, future: asyncio.Future[RecordMetadata]) -> None:
        """A record sent in the transaction: its commit checks the acknowledgement."""

    def published(self, count: int) -> None:
        """A failed attempt had published ``count`` results into the transaction."""

    def failed_attempt(self, exc: Exception, *, retry: bool) -> bool:
        """An attempt failed with ``exc``; return whether the transaction takes the
        failure over: the attempt had sent into it, so a retry in place would commit
        its outputs twice. The transaction then aborts and its records run again
        (``retry``), or the record gives up in the next transaction (``not retry``)."""


TRANSACTION: ContextVar[Transaction | None] = ContextVar("asyncconsumer_transaction", default=None)
"""In the task of a ``delivery="exactly_once"`` lane or worker: the partition's
transaction, which the app's producer sends through (so what a handler sends joins
the transaction, and its commit checks that the broker took it)."""
_PRODUCER_OPTIONS = PRODUCER_OPTIONS

# Safer than aiokafka's acks=1: a record the producer reports as written (a
# dead-lettered one, for example) survives the loss of the partition leader.
DEFAULT_PRODUCER_OPTIONS: dict[str, Any] = {"acks": "all"}


def encode(value: object) -> bytes | None:
    """Bytes for a key or value: ``bytes`` as they are, ``str`` as UTF-8, a pydantic
    model as its JSON, ``None`` as ``None`` (no key; a tombstone), anything else as
    compact JSON (``TypeError`` if it cannot be)."""
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    dump = getattr(value, "model_dump_json", None)
    if callable(dump):
        text: str = dump()
        return text.encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_headers(headers: Headers | None) -> list[tuple[str, bytes]] | None:
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, v.encode() if isinstance(v, str) else bytes(v)) for name, v in pairs]


class _SameKey:
    """The default key of a :class:`ProducerRecord`: the consumed record's."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<the consumed key>"


SAME_KEY: Any = _SameKey()


@dataclass(frozen=True, slots=True)
class ProducerRecord:
    """A record to publish, when a ``publish_to`` handler needs more than a value:
    headers, another topic or a partition, or its own key. Without ``key`` the
    consumed record's key is kept (so per-key order carries downstream);
    ``key=None`` publishes without a key. A batch handler's records have no
    consumed key: without ``key`` they are published without one."""

    value: object
    key: object = SAME_KEY
    headers: Headers | None = None
    topic: str | None = None
    partition: int | None = None


def check_producer_options(options: Mapping[str, Any]) -> dict[str, Any]:
    for name in options:
        if name in _OWNED:
            raise ConfigurationError(f"producer option {name!r} is not accepted: {_OWNED[name]}")
        if name not in _PRODUCER_OPTIONS:
            raise ConfigurationError(
                f"unknown Kafka producer option {name!r} "
                "(see aiokafka.AIOKafkaProducer for the accepted names)"
            )
    return {**DEFAULT_PRODUCER_OPTIONS, **options}


class Producer:
    """A Kafka producer, shared by everything in an app (handlers, the dead-letter
    path, ``publish_to``). :class:`~asyncconsumer.ConsumerApp` starts it before the
    consumer and stops it (flushing) after the consumer stopped.

    ``options`` go to :class:`aiokafka.AIOKafkaProducer`: ``acks`` (default
    ``"all"``), ``linger_ms``, ``max_batch_size``, ``compression_type``,
    ``enable_idempotence``, ``request_timeout_ms`` (how long a send is retried),
    ``retry_backoff_ms``, ``client_id``, ...; ``security`` (a
    :class:`~asyncconsumer.Security`) secures the connections, or aiokafka's own
    security options do (not both).
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        security: Security | None = None,
        **options: Any,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.options = check_producer_options(options)
        check_security(security, self.options, "the producer")
        self.security = security
        self._client: ProducerClient | None = None
        # The transport that makes the client; None: the one bootstrap_servers selects.
        self._transport: Transport | None = None

    def __repr__(self) -> str:
        return (
            f"Producer(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security={self.security!r}, options={redact_options(self.options)!r})"
        )

    @property
    def started(self) -> bool:
        return self._client is not None

    @classmethod
    def transactional(cls, base: Producer, transactional_id: str) -> Producer:
        """A producer with ``base``'s settings and a transactional id (idempotent,
        ``acks="all"``, as transactions require), secured as ``base`` is."""
        producer = cls(base.bootstrap_servers, security=base.security, **base.options)
        producer._transport = base._transport
        producer.options.update(
            transactional_id=transactional_id, enable_idempotence=True, acks="all"
        )
        # Nothing waits for a send inside a transaction (only its commit does):
        # lingering fills the batches of a producer that serves one input partition.
        producer.options.setdefault("linger_ms", TRANSACTION_LINGER_MS)
        # After a commit the broker answers the next transaction's first requests
        # with CONCURRENT_TRANSACTIONS until its markers are written; aiokafka then
        # waits retry_backoff_ms (100 ms by default) each time.
        producer.options.setdefault("retry_backoff_ms", TRANSACTION_RETRY_BACKOFF_MS)
        return producer

    @property
    def client(self) -> ProducerClient:
        """The running producer client (for what this class does not wrap): aiokafka's
        ``AIOKafkaProducer``, or a :class:`~asyncconsumer.testing.MemoryKafka`'s. Inside
        a ``delivery="exactly_once"`` handler: its partition's transactional producer
        (a producer with a transactional id of its own keeps its own client)."""
        routed = self._transaction()
        if routed is not None:
            return routed.client
        if self._client is None:
            raise ConsumerStoppedError("the producer is not started (it runs with the app)")
        return self._client

    def _transaction(self) -> Transaction | None:
        """The transaction this producer's sends join (inside an ``exactly_once``
        handler), unless it has a transactional id of its own."""
        routed = TRANSACTION.get()
        if routed is None or "transactional_id" in self.options:
            return None
        return routed

    async def start(self) -> None:
        if self._client is not None:
            raise RuntimeError("the producer is already started")
        transport = self._transport or transport_for(self.bootstrap_servers)
        secured = self.security.kafka_options() if self.security is not None else {}
        client = transport.producer({**self.options, **secured})
        try:
            await client.start()
        except BaseException:
            await client.stop()
            raise
        self._client = client

    async def stop(self) -> None:
        """Flush what is pending and close."""
        client, self._client = self._client, None
        if client is not None:
            await client.stop()

    async def send(
        self,
        topic: str,
        value: object = None,
        *,
        key: object = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Queue a record; the returned future resolves when the broker acknowledged it.

        Keys and values are encoded by type (:func:`encode`): bytes as they are,
        ``str`` as UTF-8, anything else as JSON.
        """
        routed = self._transaction()
        client = routed.client if routed is not None else self.client
        future = await client.send(
            topic,
            encode(value),
            key=encode(key),
            partition=partition,
            timestamp_ms=timestamp_ms,
            headers=encode_headers(headers),
        )
        if routed is not None:
            routed.sent(future)  # aiokafka would commit the transaction without it
        return future

    async def send_and_wait(
        self,
        topic: str,
        value: object = None,
        *,
        key: object = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordMetadata:
        """Send a record and wait for the broker's acknowledgement."""
        future = await self.send(
            topic, value, key=key, headers=headers, partition=partition, timestamp_ms=timestamp_ms
        )
        return await future
