"""aiokafka's low-level client, for the share consumer's own requests (KIP-932).

aiokafka has no share-group client; :class:`~asyncconsumer.ShareConsumer` encodes the
requests itself (``asyncconsumer/_share/_protocol.py``) and sends them over
aiokafka's connections through :class:`ShareClient`; :func:`record_batches` decodes
the record batches of ShareFetch responses with aiokafka's record decoder.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.record.memory_records import MemoryRecords

from . import _refusals

try:  # aiokafka >= 0.13 keeps coordinator traffic on its own connections
    from aiokafka.client import ConnectionGroup

    _COORDINATION: dict[str, Any] = {"group": ConnectionGroup.COORDINATION}
except ImportError:  # pragma: no cover
    _COORDINATION = {}

__all__ = ["GROUP_COORDINATOR", "ShareClient", "record_batches"]

GROUP_COORDINATOR = 0  # FindCoordinator key type GROUP: share groups live on the group coordinator


class ShareClient:
    """Connections to the cluster: ``send(node, call)`` for any request object aiokafka's
    connection can send; coordinator requests on their own connection, so that a
    heartbeat never waits behind a long-polling fetch."""

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        client_id: str,
        request_timeout_ms: int,
        security_options: Mapping[str, Any] | None = None,
    ) -> None:
        _refusals.install()  # before the client exists
        self._client = AIOKafkaClient(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            **(security_options or {}),
        )

    async def start(self) -> None:
        """Connect; a connection refused for a security reason (credentials, TLS)
        raises :class:`~asyncconsumer.AuthenticationError` naming the cause."""
        await _refusals.start_checked(self._client.bootstrap, self._client)

    async def close(self) -> None:
        await self._client.close()

    async def send(self, node: int, call: Any) -> Any:
        return await self._client.send(node, call)

    async def send_coordinator(self, node: int, call: Any) -> Any:
        return await self._client.send(node, call, **_COORDINATION)

    async def find_coordinator(self, group_id: str) -> int:
        return int(await self._client.coordinator_lookup(GROUP_COORDINATOR, group_id))

    async def any_node(self) -> int:
        node = self._client.get_random_node()
        if node is None:
            await self._client.force_metadata_update()
            node = self._client.get_random_node()
        if node is None:
            raise KafkaError("no broker is reachable")
        return int(node)


def record_batches(data: bytes) -> Iterator[tuple[bool, Any]]:
    """``(is_control_batch, batch)`` for each record batch of ``data``; iterating a batch
    gives records with ``offset``, ``key``, ``value``, ``headers``, ``timestamp``."""
    batches = MemoryRecords(data)
    while (batch := batches.next_batch()) is not None:
        yield bool(getattr(batch, "is_control_batch", False)), batch
