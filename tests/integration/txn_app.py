"""A ConsumerApp with a ``delivery="exactly_once"`` publish_to handler, which the
transaction tests run in subprocesses, kill, freeze and restart.

Each output is ``b"<partition>:<offset>"`` of its input, so a reader can count the
outputs of every input. With $TXN_SLOW set, each record takes that many seconds (so
that a member is caught with a transaction open); under $TXN_ORDERING ``key`` or
``none`` ($TXN_CONCURRENCY records at once) a random time between 0 and twice that,
so that records complete out of order.
"""

from __future__ import annotations

import os
import random

import anyio

from asyncconsumer import ConsumerApp, Message

slow = float(os.environ.get("TXN_SLOW", "0"))
ordering = os.environ.get("TXN_ORDERING", "partition")
concurrency = int(os.environ.get("TXN_CONCURRENCY", "20"))

app = ConsumerApp(
    bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    group_id=os.environ["TXN_GROUP"],
    auto_offset_reset="earliest",
    commit_interval=float(os.environ.get("TXN_COMMIT_INTERVAL", "0.2")),
    session_timeout_ms=int(os.environ.get("TXN_SESSION_TIMEOUT_MS", "10000")),
    heartbeat_interval_ms=int(os.environ.get("TXN_HEARTBEAT_MS", "1000")),
)


@app.handler(
    os.environ["TXN_TOPIC"],
    publish_to=os.environ["TXN_OUT"],
    delivery="exactly_once",
    ordering=ordering,  # type: ignore[arg-type]
    concurrency=None if ordering == "partition" else concurrency,
)
async def handle(msg: Message[bytes]) -> bytes:
    if slow:
        await anyio.sleep(slow if ordering == "partition" else random.uniform(0, 2 * slow))
    return b"%d:%d" % (msg.partition, msg.offset)
