"""A ConsumerApp that the crash test runs in a subprocess and kills with SIGKILL.

Every handled offset is appended to $CRASH_LOG with one write(2) each, so the
log survives the kill. Records with key b"slow" block while $CRASH_BLOCK_SLOW=1.
"""

from __future__ import annotations

import os

import anyio

from asyncconsumer import ConsumerApp, Message

log_fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
block_slow = os.environ.get("CRASH_BLOCK_SLOW") == "1"

app = ConsumerApp(
    bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
    group_id=os.environ["CRASH_GROUP"],
    auto_offset_reset="earliest",
    commit_interval=0.2,
)


@app.handler(os.environ["CRASH_TOPIC"], ordering="key", concurrency=20)
async def handle(msg: Message[bytes]) -> None:
    if msg.key == b"slow" and block_slow:
        await anyio.sleep_forever()
    os.write(log_fd, f"{msg.offset}\n".encode())
