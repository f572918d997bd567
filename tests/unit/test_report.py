"""What a run logs of its own."""

from __future__ import annotations

import logging

import anyio
import pytest

from asyncconsumer._runtime._report import warn_missing_topics
from asyncconsumer._transport._memory import MemoryConsumer
from asyncconsumer.testing import MemoryKafka


async def test_a_subscribed_topic_the_cluster_lacks_is_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = MemoryKafka()
    kafka.create_topic("orders", 2)
    client = MemoryConsumer(kafka, group_id=None, auto_offset_reset="earliest")
    with caplog.at_level(logging.WARNING, logger="asyncconsumer"), anyio.fail_after(5):
        await warn_missing_topics(client, ["orders", "ordesr"], after=0.01)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "subscribed topic 'ordesr' has no partitions after 0.01s: does it exist? "
        "(check its name; nothing is consumed from it)"
    ]
