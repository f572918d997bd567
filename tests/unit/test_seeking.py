"""Seek targets: times in milliseconds, the look-up of beginning, end and times."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka.structs import OffsetAndTimestamp

from asyncconsumer import ConfigurationError, ConsumerApp, TopicPartition
from asyncconsumer._seeking import lookup_offsets, timestamp_ms

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
    class Client:
        async def offsets_for_times(self, query: dict[TopicPartition, int]) -> Any:
            assert query == {T0: 1000, T1: 1000}
            return {T0: OffsetAndTimestamp(7, 1200), T1: None}

        async def end_offsets(self, tps: list[TopicPartition]) -> Any:
            assert tps == [T1]
            return {T1: 42}

    assert await lookup_offsets(Client(), [T0, T1], 1000) == {T0: 7, T1: 42}
    assert await lookup_offsets(Client(), [], 1000) == {}
