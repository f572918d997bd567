"""The seam between asyncconsumer and a Kafka client (httpx's transport idea).

The runtime (engine, :class:`~asyncconsumer.Consumer`, the producer, the seek
look-ups) talks to a :class:`ConsumerClient` and a :class:`ProducerClient`, made by
a :class:`Transport`:

- :class:`~._aiokafka.AiokafkaTransport`: aiokafka's clients, with the
  work-arounds for its defects (``_aiokafka.py``), for any real cluster;
- :class:`~asyncconsumer.testing.MemoryKafka`: an in-memory cluster for tests,
  chosen by ``bootstrap_servers="memory://<name>"``.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from .._errors import ConfigurationError
from ._aiokafka import AiokafkaTransport
from ._protocols import ConsumerClient, ProducerClient, Reachability, RebalanceListener, Transport

if TYPE_CHECKING:
    from ._memory import MemoryKafka

__all__ = [
    "MEMORY_SCHEME",
    "ConsumerClient",
    "ProducerClient",
    "Reachability",
    "RebalanceListener",
    "Transport",
    "register_memory",
    "transport_for",
]

MEMORY_SCHEME = "memory://"

# MemoryKafka instances by name, while they exist.
_registry: weakref.WeakValueDictionary[str, MemoryKafka] = weakref.WeakValueDictionary()


def register_memory(name: str, kafka: MemoryKafka) -> None:
    """Make ``memory://<name>`` select ``kafka`` (the newest of that name wins)."""
    _registry[name] = kafka


def transport_for(bootstrap_servers: str | list[str]) -> Transport:
    """The transport for ``bootstrap_servers``: the :class:`MemoryKafka` registered
    under ``<name>`` for ``memory://<name>``, else aiokafka."""
    if isinstance(bootstrap_servers, str) and bootstrap_servers.startswith(MEMORY_SCHEME):
        name = bootstrap_servers[len(MEMORY_SCHEME) :]
        kafka = _registry.get(name)
        if kafka is None:
            raise ConfigurationError(
                f"no MemoryKafka named {name!r} exists (bootstrap_servers={bootstrap_servers!r}): "
                "create it first, e.g. MemoryKafka(name=...) or the memory_kafka fixture"
            )
        return kafka
    return AiokafkaTransport(bootstrap_servers)
