"""Logging set-up, and the throttle of aiokafka's repeated messages."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from asyncconsumer._logging import RepeatFilter, throttle_aiokafka


def record(message: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka", level, __file__, 1, message, args, None)


def test_a_repeated_message_passes_once_per_interval_then_says_how_many_were_dropped() -> None:
    now = [0.0]
    throttle = RepeatFilter(10.0, clock=lambda: now[0])
    assert throttle.filter(record("Unable connect to node with id %s", 111))
    for _ in range(70):
        now[0] += 0.1
        assert not throttle.filter(record("Unable connect to node with id %s", 111))
    assert throttle.filter(record("Unable to update metadata"))  # another message passes
    now[0] = 10.5
    summary = record("Unable connect to node with id %s", 111)
    assert throttle.filter(summary)
    assert (
        summary.getMessage() == "Unable connect to node with id 111 [repeated 70 more times in 10s]"
    )
    now[0] = 25.0
    quiet = record("Unable connect to node with id %s", 111)
    assert throttle.filter(quiet)
    assert quiet.getMessage() == "Unable connect to node with id 111"  # nothing was dropped


def test_the_filter_forgets_old_messages_instead_of_growing() -> None:
    now = [0.0]
    throttle = RepeatFilter(1.0, max_messages=10, clock=lambda: now[0])
    for i in range(100):
        now[0] += 0.5
        assert throttle.filter(record(f"message {i}"))
    assert len(throttle._seen) <= 10


def test_every_aiokafka_logger_gets_the_throttle() -> None:
    throttle = RepeatFilter()
    throttle_aiokafka(throttle)
    throttle_aiokafka(throttle)  # once
    for name in ("aiokafka", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator"):
        assert logging.getLogger(name).filters.count(throttle) == 1
    for name in ("aiokafka", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator"):
        logging.getLogger(name).removeFilter(throttle)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        # Nothing configured: INFO to stderr, like the CLI.
        ("", "1 20 True"),
        # The user configured logging first: left as it is.
        (
            "logging.basicConfig(level=logging.WARNING, handlers=[logging.NullHandler()])",
            "1 30 True",
        ),
    ],
)
def test_run_configures_logging_unless_the_process_did(setup: str, expected: str) -> None:
    code = (
        "import logging, asyncconsumer;"
        "app = asyncconsumer.ConsumerApp(bootstrap_servers='127.0.0.1:1', group_id='g');"
        f"{setup}\n"
        "try: asyncconsumer.run(app)\n"
        "except asyncconsumer.ConfigurationError: pass  # no handlers: it stops at once\n"
        "print(len(logging.root.handlers), logging.root.level,"
        " bool(logging.getLogger('aiokafka.consumer.fetcher').filters))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == expected, result.stderr
