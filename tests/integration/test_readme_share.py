"""The README's share-group examples, run as written against Apache Kafka 4.3.

Each example is taken from README.md, its broker address, topic and group names are
replaced by the test's (each replacement must happen: an example that changed shape
fails here instead of running something else), and it runs with the names it leaves to
the reader (``run_job``, ``do``, the errors) defined by the test."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncconsumer import ConsumerApp, ShareConsumer

from .conftest import Topics, aproduce, read_topic, unique, wait_until

pytestmark = pytest.mark.apache_kafka  # share groups: Apache Kafka 4.2+ only

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SECTION = README[README.index("## Share groups") :]
SECTION = SECTION[: SECTION.index("\n## ", 1)]
BLOCKS: list[str] = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)


def example(marker: str, **replace: str) -> str:
    """The share-group block of the README containing ``marker``, with each literal
    ``"key"`` replaced by ``"value"`` (all of them must occur)."""
    (block,) = [b for b in BLOCKS if marker in b]
    for old, new in replace.items():
        literal = f'"{old}"'
        assert literal in block, f"the README example no longer has {literal}"
        block = block.replace(literal, repr(new))
    return block


def test_the_section_has_both_examples() -> None:
    assert len(BLOCKS) == 2
    example("ShareConsumer(")
    example("@app.share_handler(")


class TemporaryError(Exception):
    pass


class InvalidJob(Exception):
    pass


async def nothing_left(bootstrap: str, topic: str, group: str) -> None:
    """A new member of ``group`` gets a record produced now first: everything before it
    was acknowledged (accepted, or rejected)."""
    await aproduce(bootstrap, topic, [(None, b"marker")], partition=0)
    async with ShareConsumer(topic, bootstrap_servers=bootstrap, group_id=group) as consumer:
        with anyio.fail_after(30):
            msg = await anext(aiter(consumer))
    assert (msg.value, msg.delivery_count) == (b"marker", 1)


async def run_example(compiled: Any, namespace: dict[str, Any]) -> None:
    await eval(compiled, namespace)  # top-level await: eval gives a coroutine


async def test_the_share_consumer_example(kafka_bootstrap: str, topics: Topics) -> None:
    topic, group = await topics.create("readme-jobs", partitions=2), unique("readme-workers")
    values = [b"%d" % i for i in range(20)] + [b"again", b"invalid"]
    await aproduce(kafka_bootstrap, topic, [(None, v) for v in values])
    code = example(
        "ShareConsumer(", **{"127.0.0.1:9092": kafka_bootstrap, "jobs": topic, "workers": group}
    )
    runs: Counter[bytes] = Counter()

    async def run_job(value: bytes) -> None:
        runs[value] += 1
        if value == b"again" and runs[value] == 1:
            raise TemporaryError(value)
        if value == b"invalid":
            raise InvalidJob(value)

    namespace: dict[str, Any] = {
        "run_job": run_job,
        "TemporaryError": TemporaryError,
        "InvalidJob": InvalidJob,
    }
    compiled = compile(code, "<README.md>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_example, compiled, namespace)
            await wait_until(lambda: sum(runs.values()) == len(values) + 1, timeout=45)
            await anyio.sleep(1.0)  # a record delivered again, if any, has time to show
            tg.cancel_scope.cancel()  # the loop never ends by itself: leave it
    assert runs == Counter({**dict.fromkeys(values, 1), b"again": 2})  # released: once more
    await nothing_left(kafka_bootstrap, topic, group)


async def test_the_share_handler_example(kafka_bootstrap: str, topics: Topics) -> None:
    topic, group = await topics.create("readme-jobs", partitions=2), unique("readme-workers")
    dead_letters = f"{topic}.DLQ"  # the default dead-letter topic; created beforehand
    await topics.broker.create_topic(dead_letters, 1)
    values = [b"%d" % i for i in range(20)] + [b"flaky", b"broken"]
    await aproduce(kafka_bootstrap, topic, [(None, v) for v in values])
    code = example(
        "@app.share_handler(",
        **{"127.0.0.1:9092": kafka_bootstrap, "jobs": topic, "workers": group},
    )
    runs: Counter[bytes] = Counter()
    done: list[bytes] = []

    async def do(value: bytes) -> None:
        runs[value] += 1
        if value == b"broken" or (value == b"flaky" and runs[value] == 1):
            raise TemporaryError(value)
        done.append(value)

    namespace: dict[str, Any] = {"do": do, "__name__": "jobs_service"}
    exec(compile(code, "<README.md>", "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, ConsumerApp)
    with anyio.fail_after(90):
        async with app:
            # flaky: released once (1 s backoff), then handled; broken: 3 attempts, then
            # dead-lettered and accepted
            dead = await read_topic(kafka_bootstrap, dead_letters, 1, timeout=60)
            await wait_until(lambda: len(done) == len(values) - 1, timeout=30)
            await anyio.sleep(1.0)  # a record delivered again, if any, has time to show
            counts = app.statistics().topics[topic]
    assert sorted(done) == sorted(v for v in values if v != b"broken")
    assert runs == Counter({**dict.fromkeys(values, 1), b"flaky": 2, b"broken": 3})
    assert [(r.value, dict(r.headers)["dlq.attempts"]) for r in dead] == [(b"broken", b"3")]
    assert (counts.accepted, counts.released, counts.rejected) == (len(values), 3, 0)
    await nothing_left(kafka_bootstrap, topic, group)
