"""The aiokafka transport's reading of fetch responses (``_MessageRecords``) against
aiokafka's own ``PartitionRecords``, on the same bytes: the same records, and the same
position after every ``getall``, through transactions, control batches, compaction
gaps, a fetch offset inside a batch and a CRC error."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from asyncconsumer import Message
from asyncconsumer._transport._aiokafka import RAW_MESSAGES, _MessageRecords, _PartitionRecords

TP = TopicPartition("orders", 3)
HEADER = DefaultRecordBase.HEADER_STRUCT
ATTRIBUTES_AT = DefaultRecordBase.ATTRIBUTES_OFFSET
LAST_DELTA_AT = ATTRIBUTES_AT + 2
CRC_AT = DefaultRecordBase.CRC_OFFSET


def _batch(
    base: int,
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]],
    *,
    producer: int = -1,
    control: bool = False,
    last_delta: int | None = None,
) -> bytes:
    """A v2 batch at ``base`` of (offset delta, key, value, headers); ``last_delta``
    above the last record's delta is a batch whose tail was compacted away."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=int(producer >= 0),
        producer_id=producer,
        producer_epoch=0 if producer >= 0 else -1,
        base_sequence=0 if producer >= 0 else -1,
        batch_size=1 << 20,
    )
    for delta, key, value, headers in records:
        builder.append(
            delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=headers
        )
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    if control:
        (attributes,) = struct.unpack_from(">h", data, ATTRIBUTES_AT)
        struct.pack_into(">h", data, ATTRIBUTES_AT, attributes | DefaultRecordBase.CONTROL_MASK)
    if last_delta is not None:
        struct.pack_into(">i", data, LAST_DELTA_AT, last_delta)
    struct.pack_into(">I", data, CRC_AT, calc_crc32c(bytes(data[ATTRIBUTES_AT:])))
    return bytes(data)


ABORT, COMMIT = struct.pack(">HH", 0, 0), struct.pack(">HH", 0, 1)


def _log() -> tuple[bytes, list[tuple[int, int]]]:
    """Plain records (a tombstone, a null key, headers), an aborted transaction of
    producer 7, a committed one of producer 9, a compacted batch, and the aborted
    transactions a broker reports for it."""
    data = b"".join(
        [
            _batch(
                0,
                [
                    (0, b"k0", b"v0", []),
                    (1, None, b"v1", [("source", b"checkout")]),
                    (2, b"k2", None, []),
                    (3, b"k3", b"v3", [("a", b"1"), ("b", b"2")]),
                    (4, b"k4", b"v4", []),
                ],
            ),
            _batch(5, [(0, b"t5", b"aborted", []), (1, b"t6", b"aborted", [])], producer=7),
            _batch(7, [(0, ABORT, b"", [])], producer=7, control=True),
            _batch(8, [(0, b"c8", b"committed", []), (1, b"c9", b"committed", [])], producer=9),
            _batch(10, [(0, COMMIT, b"", [])], producer=9, control=True),
            _batch(11, [(0, b"g11", b"x", []), (2, b"g13", b"y", [])], last_delta=5),
            _batch(17, [(0, b"k17", b"z", [])]),
        ]
    )
    return data, [(7, 5)]


class _State:
    paused = False

    def __init__(self, position: int) -> None:
        self.position = position

    def consumed_to(self, position: int) -> None:
        self.position = position


class _Assignment:
    active = True

    def __init__(self, position: int) -> None:
        self.state = _State(position)

    def state_value(self, tp: TopicPartition) -> _State:
        return self.state


def _read(
    cls: Any,
    data: bytes,
    aborted: list[tuple[int, int]],
    fetch_offset: int,
    isolation: int,
    max_records: int,
) -> list[tuple[list[tuple[Any, ...]], int]]:
    """``getall(max_records)`` until the fetch result is used up: each call's records
    (their fields) and the position after it."""
    deserializer = RAW_MESSAGES if cls is _MessageRecords else None
    records = cls(
        TP, MemoryRecords(data), list(aborted), fetch_offset, deserializer, None, True, isolation
    )
    assignment = _Assignment(fetch_offset)
    result = FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)
    calls = []
    while result.has_more():
        got = result.getall(max_records)
        if cls is _MessageRecords:
            assert all(type(r) is Message for r in got)
        calls.append(
            (
                [
                    (r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers), r.timestamp)
                    for r in got
                ],
                assignment.state.position,
            )
        )
    assert records._records_iterator is None  # (the generator's cycle with it is broken)
    return calls


@pytest.mark.parametrize("isolation", [0, READ_COMMITTED], ids=["uncommitted", "committed"])
@pytest.mark.parametrize("fetch_offset", [0, 2, 4])  # (a response starts at its batch)
@pytest.mark.parametrize("max_records", [1, 3, 1000])
def test_the_same_records_and_positions_as_aiokafka(
    isolation: int, fetch_offset: int, max_records: int
) -> None:
    data, aborted = _log()
    ours = _read(_MessageRecords, data, aborted, fetch_offset, isolation, max_records)
    theirs = _read(_PartitionRecords, data, aborted, fetch_offset, isolation, max_records)
    assert ours == theirs
    offsets = [record[2] for records, _ in ours for record in records]
    expected = [0, 1, 2, 3, 4] + ([] if isolation else [5, 6]) + [8, 9, 11, 13, 17]
    assert offsets == [o for o in expected if o >= fetch_offset]
    assert ours[-1][1] == 18


@pytest.mark.parametrize("max_records", [1, 1000])
def test_the_position_passes_a_compacted_batch_tail(max_records: int) -> None:
    data = _batch(11, [(0, b"g11", b"x", []), (2, b"g13", b"y", [])], last_delta=5)
    ours = _read(_MessageRecords, data, [], 11, 0, max_records)
    assert ours == _read(_PartitionRecords, data, [], 11, 0, max_records)
    assert ours[-1][1] == 17  # the batch's last offset (16) + 1, not 14


def test_getone_steps_as_aiokafka() -> None:
    data, aborted = _log()
    ours = _MessageRecords(
        TP, MemoryRecords(data), aborted, 0, RAW_MESSAGES, None, True, READ_COMMITTED
    )
    theirs = _PartitionRecords(
        TP, MemoryRecords(data), list(aborted), 0, None, None, True, READ_COMMITTED
    )
    for record in theirs:
        mine = next(ours)
        assert (mine.offset, mine.key, mine.value) == (record.offset, record.key, record.value)
        assert ours.next_fetch_offset == theirs.next_fetch_offset
    with pytest.raises(StopIteration):
        next(ours)
    assert ours._records_iterator is None  # the generator's reference to it is broken


def test_a_corrupt_batch_raises_as_in_aiokafka() -> None:
    data = bytearray(_batch(0, [(0, b"k", b"value", [])]))
    data[-2] ^= 0xFF  # in the record, under the CRC
    for cls, deserializer in ((_MessageRecords, RAW_MESSAGES), (_PartitionRecords, None)):
        records = cls(TP, MemoryRecords(bytes(data)), [], 0, deserializer, None, True, 0)
        with pytest.raises(CorruptRecordException):
            list(records)
