"""Scenario 2: a handler that awaits 5 ms, keys K in {1, 10, 1000}, concurrency 100.

The ideal rate is min(concurrency, K) / 5 ms: records of one key must wait for
each other, different keys need not. FastStream's ``max_workers`` (unordered)
runs beside it, and for K = 1 so does ``ordering="partition"``.
"""

from __future__ import annotations

import time

import anyio

from asyncconsumer import ConsumerApp, Message

from ._common import Clock, make_topic, run_faststream, unique

CPU_SHARE: dict[str, float] = {}  # this process's CPU time per wall second, last run
DELAY = 0.005
CONCURRENCY = 100
SECONDS_AT_IDEAL = 3.0


def ideal(keys: int) -> float:
    return min(CONCURRENCY, keys) / DELAY


async def event_loop_ceiling(tasks: int, seconds: float = 2.0) -> float:
    """What the event loop itself allows: ``tasks`` bare tasks sleeping 5 ms in a loop,
    no Kafka. Timers fire late (epoll waits whole milliseconds), so it is below ideal."""
    done = 0
    iterations = max(1, int(seconds / DELAY))

    async def sleeper() -> None:
        nonlocal done
        for _ in range(iterations):
            await anyio.sleep(DELAY)
            done += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(sleeper)
    return done / (time.perf_counter() - started)


async def asyncconsumer_rate(bootstrap: str, topic: str, total: int, ordering: str) -> float:
    app = ConsumerApp(
        bootstrap_servers=bootstrap, group_id=unique("bench-io"), auto_offset_reset="earliest"
    )
    clock, done = Clock(total), anyio.Event()
    kwargs = {} if ordering == "partition" else {"concurrency": CONCURRENCY}

    @app.handler(topic, ordering=ordering, **kwargs)  # type: ignore[arg-type]
    async def handle(msg: Message[bytes]) -> None:
        await anyio.sleep(DELAY)
        if clock.tick():
            done.set()

    async with app:
        await done.wait()
    CPU_SHARE[ordering] = clock.cpu_share
    return clock.rate


async def faststream_rate(bootstrap: str, topic: str, total: int) -> float:
    clock, done = Clock(total), anyio.Event()

    async def handle(msg: bytes) -> None:
        await anyio.sleep(DELAY)
        if clock.tick():
            done.set()

    await run_faststream(bootstrap, topic, handle, done, max_workers=CONCURRENCY)
    return clock.rate


async def run(bootstrap: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for keys in (1, 10, 1000):
        total = max(600, int(ideal(keys) * SECONDS_AT_IDEAL))
        topic = await make_topic(bootstrap, f"bench-io-k{keys}", total, keys=keys)
        ceiling = await event_loop_ceiling(min(CONCURRENCY, keys))
        rows.append(
            {
                "keys": keys,
                "contender": "event-loop ceiling (bare tasks, no Kafka)",
                "rate": ceiling,
                "ideal": ideal(keys),
            }
        )
        print(
            f"  K={keys:<5} {'event-loop ceiling (bare tasks, no Kafka)':<40} "
            f"{ceiling:>9,.0f} rec/s",
            flush=True,
        )
        contenders = [("asyncconsumer key, concurrency 100", "key")]
        if keys == 1:
            contenders.append(("asyncconsumer partition ordering", "partition"))
        for name, ordering in contenders:
            started = time.perf_counter()
            rate = await asyncconsumer_rate(bootstrap, topic, total, ordering)
            cpu = CPU_SHARE[ordering]
            rows.append(
                {"keys": keys, "contender": name, "rate": rate, "ideal": ideal(keys), "cpu": cpu}
            )
            print(
                f"  K={keys:<5} {name:<40} {rate:>9,.0f} rec/s  ideal {ideal(keys):>7,.0f} "
                f"CPU {cpu:4.0%} ({time.perf_counter() - started:.1f}s wall)",
                flush=True,
            )
        rate = await faststream_rate(bootstrap, topic, total)
        rows.append(
            {
                "keys": keys,
                "contender": "FastStream max_workers=100 (unordered)",
                "rate": rate,
                "ideal": ideal(keys),
            }
        )
        print(
            f"  K={keys:<5} {'FastStream max_workers=100 (unordered)':<40} {rate:>9,.0f} rec/s",
            flush=True,
        )
    return rows
