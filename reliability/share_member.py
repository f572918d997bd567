"""The share-group member of the reliability suite:
``asyncconsumer run reliability.share_member:app``.

One ``@app.share_handler`` (KIP-932) on ``$RELY_TOPIC`` in share group ``$RELY_GROUP``;
every handled record is appended to ``$RELY_LOG`` as one JSON line (one ``os.write``),
``{"ev": "rec", "t", "p", "o", "c": delivery_count, "m", "mono", "wall"}``, when the
handler returns (the record is accepted after that). Optional: ``RELY_CONCURRENCY``
(20), ``RELY_WORK_MS`` (the handler's mean await, 1 ms), ``RELY_LOCK_MS`` (the group's
``share.record.lock.duration.ms``, 5,000).
"""

from __future__ import annotations

import os
import random

import anyio

from asyncconsumer import ConsumerApp, ShareMessage

from .eventlog import emit

env = os.environ
TOPIC = env["RELY_TOPIC"]
WORK = float(env.get("RELY_WORK_MS", "1")) / 1000.0

app = ConsumerApp(
    bootstrap_servers=env["RELY_BOOTSTRAP"], group_id=env["RELY_GROUP"], shutdown_timeout=10.0
)


@app.share_handler(
    TOPIC,
    concurrency=int(env.get("RELY_CONCURRENCY", "20")),
    auto_offset_reset="earliest",
    group_configs={"share.record.lock.duration.ms": env.get("RELY_LOCK_MS", "5000")},
)
async def handle(msg: ShareMessage) -> None:
    if WORK:
        await anyio.sleep(random.uniform(0, 2 * WORK))
    emit({"ev": "rec", "t": msg.topic, "p": msg.partition, "o": msg.offset,
          "c": msg.delivery_count})  # fmt: skip


emit({"ev": "start", "pid": os.getpid(), "share": True})
