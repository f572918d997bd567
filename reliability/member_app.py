"""The member app of the reliability scenarios: ``asyncconsumer run reliability.member_app:app``.

Every handled record, every commit seen by ``on_commit``, every assignment and every
revocation is appended to ``$RELY_LOG`` as one JSON line with one ``os.write`` each,
so the log survives SIGKILL. Settings come from the environment:

``RELY_BOOTSTRAP``, ``RELY_GROUP``, ``RELY_TOPIC``, ``RELY_MEMBER`` (member id,
unique per process), ``RELY_LOG``; optional ``RELY_ORDERING`` (``partition``),
``RELY_CONCURRENCY`` (100), ``RELY_SESSION_MS`` (6000), ``RELY_WORK_MS`` (the
handler's mean await, 1 ms), ``RELY_COMMIT_INTERVAL`` (0.5 s), ``RELY_MAX_POLL_MS``
(aiokafka's ``max_poll_interval_ms``), ``RELY_SLOW_EVERY`` / ``RELY_SLOW_S`` (records
whose offset is a positive multiple of it take that many seconds), ``RELY_LOSE_EVERY``
(records whose offset is a positive multiple of it are not logged: a simulated loss,
for the suite's self-test); ``RELY_POLICY=1``: scenario 8's failure policy
(``reliability.policy``): JSON values (poison pills cannot be decoded), retries and a
dead-letter topic ``<topic>.DLQ``; each failed attempt is logged as a ``fail`` event.
"""

from __future__ import annotations

import os
import random
from typing import Any, Literal, cast

import anyio

from asyncconsumer import Backoff, CommitError, ConsumerApp, Message, Retry, TopicPartition

from .eventlog import emit
from .policy import ATTEMPTS, BACKOFF_S, PermanentFailure, TransientFailure, fate

Ordering = Literal["partition", "key", "none"]

env = os.environ
TOPIC = env["RELY_TOPIC"]
ORDERING = cast(Ordering, env.get("RELY_ORDERING", "partition"))
WORK = float(env.get("RELY_WORK_MS", "1")) / 1000.0
SESSION_MS = int(env.get("RELY_SESSION_MS", "6000"))
SLOW_EVERY = int(env.get("RELY_SLOW_EVERY", "0"))
SLOW = float(env.get("RELY_SLOW_S", "0"))
LOSE_EVERY = int(env.get("RELY_LOSE_EVERY", "0"))
POLICY = env.get("RELY_POLICY") == "1"
POLL: dict[str, Any] = {}
if "RELY_MAX_POLL_MS" in env:
    POLL["max_poll_interval_ms"] = int(env["RELY_MAX_POLL_MS"])


def _parts(tps: list[TopicPartition] | dict[TopicPartition, int]) -> list[list[Any]]:
    return [[tp.topic, tp.partition] for tp in tps]


app = ConsumerApp(
    bootstrap_servers=env["RELY_BOOTSTRAP"],
    group_id=env["RELY_GROUP"],
    auto_offset_reset="earliest",
    commit_interval=float(env.get("RELY_COMMIT_INTERVAL", "0.5")),
    shutdown_timeout=10.0,
    session_timeout_ms=SESSION_MS,
    heartbeat_interval_ms=max(SESSION_MS // 6, 100),
    **POLL,
)


CONCURRENCY = None if ORDERING == "partition" else int(env.get("RELY_CONCURRENCY", "100"))


FAILURES: dict[str, Any] = {}
if POLICY:
    FAILURES = {
        "value_codec": "json",
        "retry": Retry(attempts=ATTEMPTS, backoff=Backoff.constant(BACKOFF_S)),
        "on_failure": "dead_letter",
        "dead_letter_topic": f"{TOPIC}.DLQ",
    }
attempts: dict[tuple[int, int], int] = {}  # failed attempts per record, in this process


@app.handler(TOPIC, ordering=ORDERING, concurrency=CONCURRENCY, **FAILURES)
async def handle(msg: Message[Any]) -> None:
    """Await a little (records overlap in flight), then log the record as handled."""
    if POLICY:
        key = (msg.key or b"").decode()
        what = fate(key, int(msg.value))
        if what == "permanent" or (
            what == "transient" and (msg.partition, msg.offset) not in attempts
        ):
            n = attempts[(msg.partition, msg.offset)] = (
                attempts.get((msg.partition, msg.offset), 0) + 1
            )
            emit({"ev": "fail", "t": msg.topic, "p": msg.partition, "o": msg.offset, "n": n})
            error = PermanentFailure if what == "permanent" else TransientFailure
            raise error(f"{what} failure of {msg.topic}[{msg.partition}]@{msg.offset}")
    if SLOW_EVERY and msg.offset and msg.offset % SLOW_EVERY == 0:
        await anyio.sleep(SLOW)
    elif WORK:
        await anyio.sleep(random.uniform(0, 2 * WORK))
    if LOSE_EVERY and msg.offset and msg.offset % LOSE_EVERY == 0:
        return
    emit(
        {
            "ev": "rec",
            "t": msg.topic,
            "p": msg.partition,
            "o": msg.offset,
            "k": (msg.key or b"").decode(),
            "s": int(msg.value),
        }
    )


@app.on_assign
async def assigned(partitions: list[TopicPartition]) -> None:
    emit({"ev": "assign", "parts": _parts(partitions)})


@app.on_revoke
async def revoked(partitions: list[TopicPartition]) -> None:
    emit({"ev": "revoke", "parts": _parts(partitions)})


@app.on_commit
async def committed(offsets: dict[TopicPartition, int], error: CommitError | None) -> None:
    emit(
        {
            "ev": "commit",
            "offsets": [[tp.topic, tp.partition, off] for tp, off in offsets.items()],
            "error": None if error is None else f"{type(error).__name__}: {error}",
        }
    )


emit({"ev": "start", "pid": os.getpid(), "ordering": ORDERING})
