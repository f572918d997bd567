"""A share-group member in its own process, for the multi-process tests.

``python share_member.py BOOTSTRAP TOPIC GROUP SLEEP_S LOCK_MS`` prints ``ready`` once
started and assigned partitions (so that a test produces only once every member takes
part), then ``partition offset delivery_count`` for each record it finished (printed
just before the loop asks for the next record, which accepts it); SIGTERM stops it
gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from asyncconsumer import ShareConsumer


async def main(bootstrap: str, topic: str, group: str, sleep: float, lock_ms: str) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with ShareConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        group_configs={"share.record.lock.duration.ms": lock_ms},
        max_records=100,
        acquire_mode="record_limit",
    ) as consumer:
        while not consumer.assignment:  # the group's heartbeats bring it within seconds
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        async for msg in consumer:
            if sleep:
                await asyncio.sleep(sleep)
            print(msg.partition, msg.offset, msg.delivery_count, flush=True)


if __name__ == "__main__":
    bootstrap, topic, group, sleep, lock_ms = sys.argv[1:6]
    with contextlib.suppress(asyncio.CancelledError):  # SIGTERM: stopped gracefully
        asyncio.run(main(bootstrap, topic, group, float(sleep), lock_ms))
