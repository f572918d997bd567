import logging
import time

import anyio
import pytest

from asyncconsumer._runtime._liveness import LivenessMonitor


async def test_a_blocked_event_loop_is_reported_with_what_was_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = LivenessMonitor(
        lambda: ["handlers.slow on orders[1]@42"], interval=0.02, warn_lag=0.2
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        await anyio.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="asyncconsumer"):
            time.sleep(0.4)  # noqa: ASYNC251 -- a handler blocking the loop, on purpose
            await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    assert monitor.max_loop_lag >= 0.3
    messages = [r.getMessage() for r in caplog.records]
    assert any("blocked for" in m and "handlers.slow on orders[1]@42" in m for m in messages)


async def test_a_stalled_fetch_loop_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LivenessMonitor(list, interval=0.01, poll_stall_after=0.05)
    with caplog.at_level(logging.WARNING, logger="asyncconsumer"):
        with anyio.move_on_after(0.3):
            await monitor.run()
        monitor.polled()
    stalls = [r for r in caplog.records if "has not polled" in r.getMessage()]
    assert len(stalls) == 1
    assert monitor.poll_age() < 0.05


async def test_the_blocking_handler_is_named_even_when_it_returned_before_the_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    running: list[str] = []
    monitor = LivenessMonitor(lambda: list(running), interval=0.02, warn_lag=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.run)
        await anyio.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="asyncconsumer"):
            running.append("handlers.crunch on orders[0]@7")
            time.sleep(0.4)  # noqa: ASYNC251 -- the handler blocks the loop ...
            running.clear()  # ... and returns before the monitor can run
            await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records if "blocked for" in r.getMessage()]
    assert len(messages) == 1
    assert "running: handlers.crunch on orders[0]@7" in messages[0]
