"""@app.share_handler: share-group records on a worker pool, outcomes as acknowledgements
(Apache Kafka 4.3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from asyncconsumer import Backoff, ConsumerApp, Retry, ShareConsumer, ShareMessage

from .conftest import Topics, aproduce, read_topic, unique, wait_until

pytestmark = pytest.mark.apache_kafka


class Flaky(Exception):
    pass


async def test_retries_are_redeliveries_and_the_last_failure_is_dead_lettered(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-app", partitions=2)
    dlq = await topics.create("share-app-dlq")
    await aproduce(
        kafka_bootstrap,
        topic,
        [(b"ok", b"%d" % i) for i in range(300)] + [(b"flaky", b"flaky"), (b"broken", b"broken")],
    )
    app = ConsumerApp(bootstrap_servers=kafka_bootstrap, group_id=unique("share-app"))
    deliveries: Counter[tuple[bytes, int]] = Counter()
    handled: list[bytes] = []

    @app.share_handler(
        topic,
        concurrency=20,
        retry=Retry(attempts=3, backoff=Backoff.constant(0.05)),
        on_failure="dead_letter",
        dead_letter_topic=dlq,
        auto_offset_reset="earliest",
    )
    async def work(msg: ShareMessage) -> None:
        deliveries[(msg.key, msg.delivery_count)] += 1
        if msg.key == b"broken" or (msg.key == b"flaky" and msg.delivery_count < 3):
            raise Flaky(msg.value)
        await anyio.sleep(0.005)
        handled.append(msg.value)

    with anyio.fail_after(90):
        async with app:
            await wait_until(lambda: len(handled) == 301, timeout=60, what="all handled")
            dead = await read_topic(kafka_bootstrap, dlq, 1, timeout=30)
            await anyio.sleep(1.5)  # a redelivery, if any, has time to show
    assert sorted(handled) == sorted([b"%d" % i for i in range(300)] + [b"flaky"])
    assert [deliveries[(b"flaky", n)] for n in (1, 2, 3)] == [1, 1, 1]
    assert [deliveries[(b"broken", n)] for n in (1, 2, 3, 4)] == [1, 1, 1, 0]
    assert [(r.key, r.value) for r in dead] == [(b"broken", b"broken")]
    assert dict(dead[0].headers)["dlq.attempts"] == b"3"
    assert max(n for (key, n) in deliveries if key == b"ok") == 1, "no record ran twice"


async def test_on_failure_stop_stops_the_app(kafka_bootstrap: str, topics: Topics) -> None:
    topic = await topics.create("share-stop")
    await aproduce(kafka_bootstrap, topic, [(None, b"bad")])
    group = unique("share-stop")
    closed: list[str] = []

    @asynccontextmanager
    async def lifespan(app: ConsumerApp) -> AsyncIterator[None]:
        yield
        closed.append("normally")  # not reached if the error were thrown in here

    app = ConsumerApp(bootstrap_servers=kafka_bootstrap, group_id=group, lifespan=lifespan)

    @app.share_handler(topic, auto_offset_reset="earliest")
    async def work(msg: ShareMessage) -> None:
        raise Flaky(msg.value)

    with anyio.fail_after(60), pytest.raises(Flaky) as raised:
        await app.run()
    assert "released" in str(raised.value.__notes__)
    assert closed == ["normally"], "the lifespan exits normally, then run() raises"
    # released, not accepted: the group delivers it again. (Its delivery count may be 3:
    # the fetch waiting at the broker when the app stopped can acquire it once more.)
    async with ShareConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group) as c:
        with anyio.fail_after(30):
            msg = await anext(aiter(c))
    assert msg.value == b"bad"
    assert msg.delivery_count >= 2


async def test_a_graceful_stop_finishes_running_records_and_releases_the_rest(
    kafka_bootstrap: str, topics: Topics
) -> None:
    topic = await topics.create("share-restart", partitions=2)
    group = unique("share-restart")
    total = 60
    await aproduce(kafka_bootstrap, topic, [(None, b"%d" % i) for i in range(total)])
    runs: list[list[bytes]] = [[], []]

    def make_app(done: list[bytes]) -> ConsumerApp:
        app = ConsumerApp(bootstrap_servers=kafka_bootstrap, group_id=group)

        @app.share_handler(topic, concurrency=5, auto_offset_reset="earliest")
        async def work(msg: ShareMessage) -> None:
            await anyio.sleep(0.1)
            done.append(msg.value)

        return app

    with anyio.fail_after(90):
        async with make_app(runs[0]):
            await wait_until(lambda: len(runs[0]) >= 10, timeout=60, what="first records")
        async with make_app(runs[1]):
            await wait_until(lambda: len(runs[0]) + len(runs[1]) >= total, what="the rest")
            await anyio.sleep(1.5)  # a redelivery, if any, has time to show
    assert not set(runs[0]) & set(runs[1]), "what the first run finished was accepted"
    assert sorted(runs[0] + runs[1]) == sorted(b"%d" % i for i in range(total))
