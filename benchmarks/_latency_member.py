"""One contender of scenario 5 in its own process, beside the baseline in another.

    python -m benchmarks._latency_member BOOTSTRAP TOPIC CONTENDER TOTAL OUT

It runs the contender named ``CONTENDER`` (a key of :data:`benchmarks.latency.CONTENDERS`)
on ``TOPIC``, prints ``ready`` once the warm-up record of every partition arrived, and
once ``TOTAL`` steady records arrived (or a line ``stop`` came on stdin: the parent
gave up) writes what it measured to the JSON file ``OUT`` and prints ``done``: each
record's latency by record number (ns from send to handler start, -1 if it never
came), the time from the fetch response when known, duplicates and CPU seconds.
"""

from __future__ import annotations

import json
import sys
import time

import anyio

from .latency import CONTENDERS, FetchStamps, Sink


async def main(bootstrap: str, topic: str, name: str, total: int, out: str) -> None:
    stamps = FetchStamps()
    with stamps.installed():
        sink = Sink(total, stamps.arrived)
        async with anyio.create_task_group() as tg:

            async def watch_stdin() -> None:
                # (the parent closes stdin once it read "done": the thread ends then)
                await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                sink.done.set()

            tg.start_soon(watch_stdin)

            async def consume() -> None:
                await CONTENDERS[name](bootstrap, topic, sink)

            async with anyio.create_task_group() as contender:
                contender.start_soon(consume)
                await sink.ready.wait()
                cpu = time.process_time()
                print("ready", flush=True)
                await sink.done.wait()
                cpu = time.process_time() - cpu
                # Every contender returns once ``done`` is set, having stopped its
                # client; one that does not within 10 s is cancelled.
                contender.cancel_scope.deadline = anyio.current_time() + 10
            tg.cancel_scope.cancel()
    measured = {
        "latencies": list(sink.by_number),
        "fetched": sink.fetched,
        "duplicates": sink.duplicates,
        "cpu_seconds": cpu,
    }
    await anyio.Path(out).write_text(json.dumps(measured))
    print("done", flush=True)


if __name__ == "__main__":
    bootstrap, topic, name, total, out = sys.argv[1:6]
    anyio.run(main, bootstrap, topic, name, int(total), out)
