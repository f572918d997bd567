"""An :class:`~asyncconsumer.OffsetStore` on SQLAlchemy's asyncio API (extra ``sqlalchemy``).

One table, ``(group_id, topic, partition) -> next_offset``, in the database that
holds the results. A handler writes its results and the record's offset in one
transaction::

    store = SqlOffsetStore(engine, group_id="ledger")
    app = ConsumerApp(bootstrap_servers=..., group_id="ledger", offset_store=store)

    @app.handler("payments")
    async def book(msg: Message[bytes]) -> None:
        async with store.transaction(msg) as conn:
            await conn.execute(ledger.insert().values(...))

Tested on SQLite (``aiosqlite``) and PostgreSQL (``asyncpg``); upserts use
``INSERT ... ON CONFLICT`` there, and an update-then-insert elsewhere.

Fencing: :meth:`SqlOffsetStore.load`, which the app calls on every assignment,
*claims* the partitions: it increments each one's ``epoch`` and remembers it. A
store of an offset then only succeeds if the row still has that epoch, so a member
that lost a partition (frozen past its session timeout, then resumed) cannot write
one more result for it: its transaction raises :class:`FencedError` and rolls back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.structs import TopicPartition
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .._errors import AsyncConsumerError
from .._message import Message

__all__ = ["FencedError", "SqlOffsetStore"]

_NONE = -1  # next_offset of a claimed partition that has no stored offset yet


class FencedError(AsyncConsumerError):
    """Another member claimed the partition since this one loaded it: the results
    of this transaction are rolled back. The record fails (with ``on_failure="stop"``,
    the default, the app stops: it is a zombie of the group)."""


class SqlOffsetStore:
    """Offsets of one consumer group in a table of the results' database.

    ``engine`` is an ``AsyncEngine`` (``create_async_engine(url)``); ``table`` the
    table's name (created by :meth:`create_table`, or by your migrations: columns
    ``group_id``, ``topic``, ``partition``, ``next_offset``, ``epoch`` (``BIGINT NOT
    NULL DEFAULT 0``), primary key the first three). A table created before ``epoch``
    existed needs ``ALTER TABLE asyncconsumer_offsets ADD COLUMN epoch BIGINT NOT NULL
    DEFAULT 0``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        group_id: str,
        *,
        table: str = "asyncconsumer_offsets",
        schema: str | None = None,
    ) -> None:
        if not group_id:
            raise ValueError("SqlOffsetStore needs the consumer group's id")
        self.engine = engine
        self.group_id = group_id
        self.table = Table(
            table,
            MetaData(schema=schema),
            Column("group_id", String(255), primary_key=True),
            Column("topic", String(255), primary_key=True),
            Column("partition", Integer, primary_key=True),
            Column("next_offset", BigInteger, nullable=False),
            Column("epoch", BigInteger, nullable=False, server_default="0"),
        )
        self._epochs: dict[TopicPartition, int] = {}  # what load() claimed

    async def create_table(self) -> None:
        """Create the offsets table if it does not exist."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.table.metadata.create_all)

    async def load(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Claim ``partitions`` (fencing their previous owners, see the module) and
        return the next offset stored for each that has one."""
        if not partitions:
            return {}
        t = self.table
        found: dict[TopicPartition, int] = {}
        async with self.engine.begin() as conn:
            for tp in partitions:
                match = self._match(tp)
                bumped = await conn.execute(update(t).where(match).values(epoch=t.c.epoch + 1))
                if bumped.rowcount == 0:
                    await conn.execute(
                        t.insert().values(**self._key(tp), next_offset=_NONE, epoch=1)
                    )
                offset, epoch = (
                    await conn.execute(select(t.c.next_offset, t.c.epoch).where(match))
                ).one()
                self._epochs[tp] = epoch
                if offset >= 0:
                    found[tp] = offset
        return found

    def _key(self, tp: TopicPartition) -> dict[str, Any]:
        return {"group_id": self.group_id, "topic": tp.topic, "partition": tp.partition}

    def _match(self, tp: TopicPartition) -> Any:
        t = self.table
        return and_(
            t.c.group_id == self.group_id, t.c.topic == tp.topic, t.c.partition == tp.partition
        )

    async def store(
        self, transaction: AsyncConnection, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """Store each partition's next offset inside ``transaction``; raise
        :class:`FencedError` if another member claimed one since :meth:`load`."""
        t = self.table
        for tp, offset in offsets.items():
            epoch = self._epochs.get(tp)
            if epoch is not None:
                match = and_(self._match(tp), t.c.epoch == epoch)
                stored = await transaction.execute(
                    update(t).where(match).values(next_offset=offset)
                )
                if stored.rowcount == 0:
                    raise FencedError(
                        f"{tp.topic}[{tp.partition}] was claimed by another member of group "
                        f"{self.group_id!r} (this one loaded it at epoch {epoch}); the "
                        "transaction is rolled back"
                    )
                continue
            await self._upsert(transaction, tp, offset)  # not loaded: used on its own

    async def _upsert(self, transaction: AsyncConnection, tp: TopicPartition, offset: int) -> None:
        t = self.table
        key = self._key(tp)
        dialect = transaction.dialect.name
        if dialect in ("postgresql", "sqlite"):
            insert: Any
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            statement = insert(t).values(**key, next_offset=offset)
            await transaction.execute(
                statement.on_conflict_do_update(
                    index_elements=[t.c.group_id, t.c.topic, t.c.partition],
                    set_={"next_offset": statement.excluded.next_offset},
                )
            )
            return
        result = await transaction.execute(
            update(t).where(self._match(tp)).values(next_offset=offset)
        )
        if result.rowcount == 0:
            await transaction.execute(t.insert().values(**key, next_offset=offset))

    @asynccontextmanager
    async def transaction(
        self, msg: Message[Any] | Sequence[Message[Any]]
    ) -> AsyncIterator[AsyncConnection]:
        """A database transaction for the results of ``msg`` (or a batch's messages):
        it stores the offset after them and commits when the block ends, or rolls
        everything back if the block raises (the record then fails as usual)."""
        msgs = [msg] if isinstance(msg, Message) else list(msg)
        if not msgs:
            raise ValueError("a transaction needs the message(s) whose results it writes")
        offsets: dict[TopicPartition, int] = {}
        for m in msgs:
            offsets[m.tp] = max(offsets.get(m.tp, 0), m.offset + 1)
        async with self.engine.begin() as conn:
            yield conn
            await self.store(conn, offsets)
