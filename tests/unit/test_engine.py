"""Engine glue without a broker: abort, the drain."""

from typing import Any

import anyio

from asyncconsumer import Message
from asyncconsumer._config import ConsumerSettings
from asyncconsumer._handlers import HandlerRegistry
from asyncconsumer._message import make_decoder
from asyncconsumer._runtime._engine import Engine
from asyncconsumer._runtime._lanes import BufferBound, PartitionLane
from asyncconsumer._runtime._offsets import PartitionOffsets
from asyncconsumer._runtime._pipeline import Processor

from .test_lanes import TP, records


async def test_abort_reaches_lanes_that_a_revoke_is_draining() -> None:
    started = anyio.Event()

    async def handler(msg: Message[Any]) -> None:
        started.set()
        await anyio.sleep_forever()

    engine = Engine(
        ConsumerSettings("127.0.0.1:9"), HandlerRegistry(), [], [], max_buffered_records=10
    )
    lane = PartitionLane(
        TP, Processor(handler, make_decoder(None, None)), PartitionOffsets(), engine,
        bound=BufferBound(10),
    )  # fmt: skip
    async with anyio.create_task_group() as tg:
        tg.start_soon(lane.run)
        lane.push(records(0))
        await started.wait()
        try:
            # A revoke took the lane out of the assignment and drains it (60 s grace).
            with anyio.fail_after(2):
                async with anyio.create_task_group() as revoke:
                    revoke.start_soon(engine._drain, [lane], 60.0)
                    await anyio.sleep(0.05)
                    engine.abort()
        finally:
            lane.cancel()  # so that a failure ends the test instead of hanging it
    assert lane.done.is_set()
    assert lane.offsets.completed == -1  # cancelled, not committed
