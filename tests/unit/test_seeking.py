"""Seek targets: times in milliseconds, the look-up of beginning, end and times."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from asyncconsumer import ConfigurationError, ConsumerApp, TopicPartition
from asyncconsumer._seeking import lookup_offsets, timestamp_ms
from asyncconsumer._transport._memory import MemoryConsumer
from asyncconsumer.testing import MemoryKafka

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_timestamp_ms_takes_aware_datetimes_and_epoch_milliseconds() -> None:
    assert timestamp_ms(datetime(2026, 11, 20, tzinfo=UTC)) == 1_795_132_800_000
    plus_one = timezone(timedelta(hours=1))
    assert timestamp_ms(datetime(2026, 11, 20, 1, tzinfo=plus_one)) == 1_795_132_800_000
    assert timestamp_ms(5) == 5
    with pytest.raises(ValueError, match="timezone-aware"):
        timestamp_ms(datetime(2026, 11, 20))
    for bad in (-1, 1.5, True, "2026"):
        with pytest.raises(ValueError, match="epoch milliseconds"):
            timestamp_ms(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="start_at"):
        ConsumerApp(bootstrap_servers="x:1", group_id="g", start_at=datetime(2026, 1, 1))


async def test_a_time_after_the_last_record_goes_to_the_end() -> None:
    kafka = MemoryKafka()
    kafka.create_topic("t", 2)
    for offset in range(10):  # t[0]: timestamps 500, 600, ... 1400
        kafka.publish("t", b"v", partition=0, timestamp_ms=500 + 100 * offset)
    for _ in range(42):  # t[1]: all before 1000
        kafka.publish("t", b"v", partition=1, timestamp_ms=900)
    client = MemoryConsumer(kafka, group_id=None, auto_offset_reset="earliest")
    assert await lookup_offsets(client, [T0, T1], 1000) == {T0: 5, T1: 42}
    assert await lookup_offsets(client, [T0, T1], "beginning") == {T0: 0, T1: 0}
    assert await lookup_offsets(client, [T0, T1], "end") == {T0: 10, T1: 42}
    assert await lookup_offsets(client, [], 1000) == {}
