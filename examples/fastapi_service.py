"""An example web service that consumes: FastAPI + a ConsumerApp, typed payloads, probes.

Run it against any broker (the embedded one: ``asyncconsumer broker``):

    ASYNCCONSUMER_BOOTSTRAP_SERVERS=127.0.0.1:9092 uvicorn examples.fastapi_service:api

then ``curl localhost:8000/health/ready``, ``/metrics`` and ``/totals``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel

from asyncconsumer import ConsumerApp, Message
from asyncconsumer.integrations.fastapi import consumer_lifespan, health_router

log = logging.getLogger("examples.service")

ORDERS = os.environ.get("EXAMPLE_ORDERS_TOPIC", "orders")


class Order(BaseModel):
    id: int
    amount: float


class Totals(BaseModel):
    orders: int = 0
    revenue: float = 0.0


totals = Totals()

consumer = ConsumerApp(
    bootstrap_servers=os.environ.get("ASYNCCONSUMER_BOOTSTRAP_SERVERS")
    or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    group_id=os.environ.get("EXAMPLE_GROUP_ID", "orders-service"),
    auto_offset_reset="earliest",
    commit_interval=1.0,
)


@consumer.handler(ORDERS)
async def handle_order(msg: Message[Order]) -> None:
    totals.orders += 1
    totals.revenue += msg.value.amount


@asynccontextmanager
async def resources(api: FastAPI) -> AsyncIterator[None]:
    log.info("opening resources")  # a connection pool, entered before the consumer starts
    yield
    log.info("closing resources")  # ... and closed after it stopped and committed


api = FastAPI(lifespan=consumer_lifespan(consumer, resources))
api.include_router(health_router(consumer))


@api.get("/totals")
async def get_totals() -> Totals:
    return totals
