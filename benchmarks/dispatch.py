"""Scenario 7: the framework's own cost per record, without a broker.

Records built in memory are pushed into the lanes the way the fetch loop does (a poll
of up to 1,000 records per partition, 4 partitions, pushed again when a lane drains
to half), through a no-op handler. What is left is the per-record cost of the lanes,
the workers, the key bookkeeping, the completion tracker, the decoding into a
``Message`` and the handler call, apart from aiokafka's decoding and the network.
Reported in process CPU microseconds per record (median of the rounds).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import anyio
from aiokafka.structs import TopicPartition

from asyncconsumer._message import Message, Record, make_decoder
from asyncconsumer._runtime._concurrent import KeyedLane, WorkerPool
from asyncconsumer._runtime._lanes import BufferBound, Lane, LaneOwner, PartitionLane
from asyncconsumer._runtime._offsets import PartitionOffsets
from asyncconsumer._runtime._pipeline import Processor
from asyncconsumer.metrics import HandlerTimer

MODES = ("partition", "partition + metrics", "key (concurrency 100)", "none (concurrency 100)")
PARTITIONS = 4
KEYS = 250  # per partition
POLL = 1000


class _Owner(LaneOwner):
    def lane_failed(self, lane: Lane, record: Record | None, exc: Exception) -> None:
        raise exc

    def lane_drained(self, lane: Lane) -> None:
        lane.paused = False  # the fetch loop takes the partition again


def _records(tp: TopicPartition, count: int) -> list[Record]:
    # 1,000 keys over 4 partitions, as scenario 1's topics: about 250 keys per
    # partition, so a poll of 1,000 records holds each key about 4 times.
    value = b'{"order":1,"sku":"a-1","qty":3}'
    headers = (("source", b"checkout"),)
    return [
        Message(tp.topic, tp.partition, o, b"k%d-%d" % (tp.partition, o % KEYS), value, headers, 0)
        for o in range(count)
    ]


async def _round(mode: str, total: int) -> float:
    done = anyio.Event()
    handled = 0

    async def handler(msg: Any) -> None:
        nonlocal handled
        handled += 1
        if handled == total:
            done.set()

    timing = HandlerTimer() if "metrics" in mode else None
    processor = Processor(handler, make_decoder(None, None), timing=timing)
    tps = [TopicPartition("t", p) for p in range(PARTITIONS)]
    backlog = {tp: _records(tp, total // PARTITIONS) for tp in tps}
    bound, owner = BufferBound(POLL), _Owner()
    pool: WorkerPool | None = None
    async with anyio.create_task_group() as tg:
        lanes: dict[TopicPartition, Lane]
        if mode.startswith(("key", "none")):
            pool = WorkerPool(processor, 100, "bench")
            pool.start(tg)
            lanes = {
                tp: KeyedLane(
                    tp, pool, PartitionOffsets(), owner, by_key=mode.startswith("key"), bound=bound
                )
                for tp in tps
            }
        else:
            lanes = {
                tp: PartitionLane(tp, processor, PartitionOffsets(), owner, bound=bound)
                for tp in tps
            }
        for lane in lanes.values():
            lane.start(tg)
        await anyio.sleep(0.01)
        position = dict.fromkeys(tps, 0)
        started = time.process_time()
        while not done.is_set():
            for tp, lane in lanes.items():
                at = position[tp]
                if not lane.paused and at < len(backlog[tp]):
                    position[tp] = at + POLL
                    lane.paused = lane.push(backlog[tp][at : at + POLL])
            await anyio.lowlevel.checkpoint()
        cpu = time.process_time() - started
        for lane in lanes.values():
            lane.close()
            lane.cancel()
        if pool is not None:
            pool.close()
        tg.cancel_scope.cancel()
    return cpu / total * 1e6


async def run(total: int = 200_000, repeat: int = 5) -> dict[str, dict[str, float]]:
    """CPU µs per record per mode: median, min and max over ``repeat`` rounds
    (interleaved)."""
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeat):
        for mode in MODES:
            samples[mode].append(await _round(mode, total))
    results = {
        mode: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for mode, v in samples.items()
    }
    for mode, figures in results.items():
        print(
            f"  {mode:<24} {figures['median']:.2f} CPU µs/record "
            f"[{figures['min']:.2f}-{figures['max']:.2f}]",
            flush=True,
        )
    return results
