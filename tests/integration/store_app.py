"""A ConsumerApp with an external offset store, run in a subprocess by the crash
tests: each record's row and its offset are written in one database transaction."""

from __future__ import annotations

import os

import anyio
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.ext.asyncio import create_async_engine

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.integrations.sqlalchemy import SqlOffsetStore

results = Table(
    os.environ["STORE_RESULTS"],
    MetaData(),
    Column("topic", String(255)),
    Column("partition", Integer),
    Column("offset", Integer),
)
engine = create_async_engine(os.environ["STORE_URL"])
store = SqlOffsetStore(engine, group_id=os.environ["STORE_GROUP"])

app = ConsumerApp(
    bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    group_id=os.environ["STORE_GROUP"],
    auto_offset_reset="earliest",
    commit_interval=3600,  # Kafka's committed offsets stay behind: the store must win
    offset_store=store,
)


@app.handler(os.environ["STORE_TOPIC"])
async def handle(msg: Message[bytes]) -> None:
    async with store.transaction(msg) as conn:
        await conn.execute(
            results.insert().values(topic=msg.topic, partition=msg.partition, offset=msg.offset)
        )
        await anyio.sleep(0.002)  # so that a kill lands in the middle of the stream
