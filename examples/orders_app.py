"""An example ConsumerApp: order and payment events, JSON-encoded.

Run it against any broker:

    ASYNCCONSUMER_BOOTSTRAP_SERVERS=127.0.0.1:9092 asyncconsumer run examples.orders_app:app
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asyncconsumer import ConsumerApp, Message, TopicPartition

log = logging.getLogger("examples.orders")

ORDERS = os.environ.get("EXAMPLE_ORDERS_TOPIC", "orders")
PAYMENTS = os.environ.get("EXAMPLE_PAYMENTS_TOPIC", "payments")


class Totals:
    """Stands in for a database: what the handlers did."""

    def __init__(self) -> None:
        self.handled: Counter[str] = Counter()
        self.revenue = 0.0
        self.next_offsets: dict[TopicPartition, int] = {}


totals = Totals()


@asynccontextmanager
async def lifespan(app: ConsumerApp) -> AsyncIterator[None]:
    log.info("opening resources")  # a connection pool would be opened here
    yield
    log.info("closing resources")


app = ConsumerApp(
    bootstrap_servers=os.environ.get("ASYNCCONSUMER_BOOTSTRAP_SERVERS")
    or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    group_id=os.environ.get("ASYNCCONSUMER_GROUP_ID", "orders-example"),
    auto_offset_reset="earliest",
    commit_interval=1.0,
    lifespan=lifespan,
)


@app.handler(ORDERS, value_codec="json", key_codec="str")
async def handle_order(msg: Message[dict[str, Any]]) -> None:
    totals.revenue += msg.value["amount"]
    totals.handled[msg.topic] += 1
    totals.next_offsets[msg.tp] = msg.offset + 1


@app.handler(PAYMENTS, value_codec="json")
async def handle_payment(msg: Message[dict[str, Any]]) -> None:
    totals.handled[msg.topic] += 1
    totals.next_offsets[msg.tp] = msg.offset + 1


@app.on_assign
async def assigned(partitions: list[TopicPartition]) -> None:
    log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))


@app.on_revoke
async def revoked(partitions: list[TopicPartition]) -> None:
    log.info(
        "revoked %d partitions (in-flight records finished, offsets committed)", len(partitions)
    )
