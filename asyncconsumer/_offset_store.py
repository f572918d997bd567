"""External offset stores: offsets kept with the results, in the results' database.

The pattern from Kafka's consumer documentation: the handler writes its results
and the offset of the record in one database transaction, and on assignment the
consumer seeks to what the database holds. A crash then neither loses a result
nor applies one twice, without Kafka transactions. Kafka commits still happen (lag
metrics and tools keep working), but the store wins on assignment.

:class:`OffsetStore` is what the app needs (``load``) and what a handler calls
(``store``, inside its own transaction); :mod:`asyncconsumer.integrations.sqlalchemy`
implements it on SQLAlchemy's asyncio API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from aiokafka.structs import TopicPartition

__all__ = ["OffsetStore"]

Tx = TypeVar("Tx", contravariant=True)


@runtime_checkable
class OffsetStore(Protocol[Tx]):
    """Offsets kept in the same store, and the same transactions, as the results."""

    async def load(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        """The next offset to read of each of ``partitions`` that has one stored
        (partitions without one start from the group's committed offset). Called on
        every assignment: a store may claim the partitions there, so that a previous
        owner's later :meth:`store` fails (see ``SqlOffsetStore``)."""
        ...

    async def store(self, transaction: Tx, offsets: Mapping[TopicPartition, int]) -> None:
        """Record, inside the caller's ``transaction``, that each partition's next
        offset to read is ``offsets[tp]`` (the offset after the last record whose
        results the transaction writes)."""
        ...
