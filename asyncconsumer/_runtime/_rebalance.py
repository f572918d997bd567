"""Adapter from the client's rebalance listener to asyncconsumer's owners.

aiokafka logs and swallows any exception raised by a listener. The adapter
hands every exception to the owner's ``on_error`` instead, so that a failing
``on_assign`` / ``on_revoke`` stops the app (or surfaces in ``async for``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka.structs import TopicPartition

__all__ = ["RebalanceAdapter", "RebalanceHook"]

RebalanceHook = Callable[[list[TopicPartition]], Awaitable[None]]
"""A user rebalance hook: ``async def hook(partitions: list[TopicPartition]) -> None``."""


class RebalanceAdapter:
    """A :class:`~asyncconsumer._transport.RebalanceListener` that never raises."""

    def __init__(
        self,
        on_revoked: RebalanceHook,
        on_assigned: RebalanceHook,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned
        self._on_error = on_error

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self._on_revoked(sorted(revoked))
        except Exception as exc:
            self._on_error(exc)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self._on_assigned(sorted(assigned))
        except Exception as exc:
            self._on_error(exc)
