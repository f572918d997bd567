"""The share-group wire format (asyncconsumer._share), checked against byte fixtures
written by hand from Apache Kafka 4.3's message schemas."""

from __future__ import annotations

import uuid
from io import BytesIO

import pytest
from aiokafka.errors import UnsupportedVersionError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from asyncconsumer._share import _protocol as p
from asyncconsumer._share._wire import Reader, Writer, decode_uvarint, encode_uvarint

TOPIC_ID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
TID = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")],
)
def test_uvarint(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded, 0) == (value, len(encoded))


def test_compact_types_round_trip() -> None:
    w = Writer()
    w.compact_string("ab")
    w.compact_string(None)
    w.compact_array_length(2)
    w.compact_array_length(None)
    w.uuid(TOPIC_ID)
    assert w.getvalue() == b"\x03ab" + b"\x00" + b"\x03" + b"\x00" + TID
    r = Reader(w.getvalue())
    assert r.compact_nullable_string() == "ab"
    assert r.compact_nullable_string() is None
    assert r.compact_array_length() == 2
    assert r.compact_array_length() == -1
    assert r.uuid() == TOPIC_ID


def test_reader_skips_unknown_tagged_fields_and_detects_underrun() -> None:
    # two tagged fields: tag 0 with 2 bytes, tag 5 with 1 byte; then an int8
    r = Reader(b"\x02" + b"\x00\x02xy" + b"\x05\x01z" + b"\x07")
    r.tagged_fields()
    assert r.int8() == 7
    with pytest.raises(ValueError, match="underrun"):
        Reader(b"\x05ab").compact_nullable_string()


def test_heartbeat_request_bytes() -> None:
    call = p.share_heartbeat_request("g", "m1", 0, ["jobs"])
    assert (call.API_KEY, call.API_VERSION) == (76, 1)
    assert call.encode() == (
        b"\x02g"  # group_id
        b"\x03m1"  # member_id
        b"\x00\x00\x00\x00"  # member_epoch 0
        b"\x00"  # rack_id null
        b"\x02\x05jobs"  # subscribed_topic_names: 1 element
        b"\x00"  # tagged fields
    )
    assert p.share_heartbeat_request("g", "m1", 3, None).encode().endswith(b"\x00\x00")


def test_request_header_v2() -> None:
    call = p.share_heartbeat_request("g", "m", 0, None)
    header = call.build_request_header(correlation_id=7, client_id="c")
    assert header.encode() == b"\x00\x4c\x00\x01\x00\x00\x00\x07\x00\x01c\x00"
    parsed = call.parse_response_header(BytesIO(b"\x00\x00\x00\x07\x00rest"))
    assert parsed.correlation_id == 7


def test_version_outside_the_brokers_range_is_refused() -> None:
    call = p.share_fetch_request(
        "g",
        "m",
        0,
        max_wait_ms=1,
        min_bytes=1,
        max_bytes=1,
        max_records=1,
        batch_size=1,
        partitions={},
        acks={},
        forgotten={},
    )
    assert call.prepare({78: (1, 2)}) is call
    assert call.API_VERSION == 2
    assert call.prepare({78: (1, 1)}).API_VERSION == 1
    with pytest.raises(UnsupportedVersionError, match="ShareFetch versions 3-4"):
        call.prepare({78: (3, 4)})


def test_heartbeat_response_with_and_without_assignment() -> None:
    body = (
        b"\x00\x00\x00\x00"  # throttle
        b"\x00\x00"  # error_code
        b"\x00"  # error_message null
        b"\x03m1"  # member_id
        b"\x00\x00\x00\x05"  # member_epoch 5
        b"\x00\x00\x03\xe8"  # heartbeat_interval_ms 1000
        b"\x01"  # assignment present
        b"\x02" + TID + b"\x03\x00\x00\x00\x00\x00\x00\x00\x02\x00"  # [topic: partitions 0, 2]
        b"\x00"  # assignment tagged fields
        b"\x00"  # tagged fields
    )
    result = p.share_heartbeat_request("g", "m", 0, None).RESPONSE_TYPE.decode(body)
    assert result == p.HeartbeatResult(0, None, "m1", 5, 1000, {TOPIC_ID: [0, 2]})
    none = body[: body.index(b"\x01\x02")] + b"\xff\x00"
    result = p.share_heartbeat_request("g", "m", 0, None).RESPONSE_TYPE.decode(none)
    assert result.assignment is None
    assert result.member_epoch == 5


def test_share_fetch_request_bytes() -> None:
    call = p.share_fetch_request(
        "g",
        "m",
        1,
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=1024,
        max_records=10,
        batch_size=10,
        partitions={TOPIC_ID: [0]},
        acks={TOPIC_ID: {1: [p.AckBatch(4, 6, (p.ACCEPT,))]}},
        forgotten={TOPIC_ID: [3]},
    )
    assert (call.API_KEY, call.prepare({78: (1, 1)}).API_VERSION) == (78, 1)
    v1 = call.encode()
    assert call.prepare({78: (1, 2)}).API_VERSION == 2
    # v2 adds share_acquire_mode (int8) and is_renew_ack (bool) after batch_size
    assert call.encode() == v1[:28] + b"\x00\x00" + v1[28:]
    assert (
        v1
        == (
            b"\x02g\x02m"
            b"\x00\x00\x00\x01"  # session epoch
            b"\x00\x00\x01\xf4"  # max_wait_ms
            b"\x00\x00\x00\x01"  # min_bytes
            b"\x00\x00\x04\x00"  # max_bytes
            b"\x00\x00\x00\x0a"  # max_records
            b"\x00\x00\x00\x0a"  # batch_size
            b"\x02" + TID + b"\x03"  # 1 topic, 2 partitions
            b"\x00\x00\x00\x00\x01\x00"  # partition 0, no acks
            b"\x00\x00\x00\x01\x02"  # partition 1, 1 ack batch:
            b"\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x06\x02\x01\x00"
            b"\x00"  # partition tags
            b"\x00"  # topic tags
            b"\x02" + TID + b"\x02\x00\x00\x00\x03\x00"  # forgotten: partition 3
            b"\x00"
        )
    )


def _records(offsets: range, base: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset in offsets:
        builder.append(offset - base, timestamp=1000, key=None, value=b"v%d" % offset, headers=[])
    data = bytes(builder.build())
    return base.to_bytes(8, "big") + data[8:]  # the batch's base offset


def test_share_fetch_response_with_records() -> None:
    records = _records(range(10, 13), base=10)
    body = (
        b"\x00\x00\x00\x00\x00\x00\x00"  # throttle, error_code, error_message null
        b"\x00\x00\x75\x30"  # lock timeout 30000
        b"\x02" + TID + b"\x02"  # 1 topic, 1 partition
        b"\x00\x00\x00\x01"  # partition 1
        b"\x00\x00\x00"  # error_code, error_message null
        b"\x00\x79\x05oops"  # acknowledge_error_code 121, message "oops"
        b"\x00\x00\x00\x01\x00\x00\x00\x00\x00"  # current leader 1, epoch 0, tags
         + encode_uvarint(len(records) + 1) + records + b"\x02"  # one acquired range
        b"\x00\x00\x00\x00\x00\x00\x00\x0a\x00\x00\x00\x00\x00\x00\x00\x0c\x00\x02\x00"
        b"\x00"  # partition tags
        b"\x00"  # topic tags
        b"\x01"  # node endpoints: none
        b"\x00"
    )
    call = p.share_fetch_request(
        "g",
        "m",
        0,
        max_wait_ms=1,
        min_bytes=1,
        max_bytes=1,
        max_records=1,
        batch_size=1,
        partitions={},
        acks={},
        forgotten={},
    )
    result = call.RESPONSE_TYPE.decode(body)
    assert result.lock_timeout_ms == 30000
    (part,) = result.partitions
    assert (part.topic_id, part.partition, part.error_code) == (TOPIC_ID, 1, 0)
    assert (part.ack_error_code, part.ack_error_message) == (121, "oops")
    assert part.acquired == [p.AcquiredRange(10, 12, 2)]
    assert part.records == records


def test_share_acknowledge_request_and_response() -> None:
    call = p.share_acknowledge_request(
        "g", "m", -1, {TOPIC_ID: {0: [p.AckBatch(0, 1, (p.RELEASE, p.REJECT))]}}
    )
    assert (call.API_KEY, call.API_VERSION) == (79, 1)
    assert call.encode() == (
        b"\x02g\x02m\xff\xff\xff\xff"
        b"\x02" + TID + b"\x02\x00\x00\x00\x00"
        b"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x03\x02\x03\x00"
        b"\x00\x00\x00"
    )
    response = (
        b"\x00\x00\x00\x00\x00\x00\x00"
        b"\x02" + TID + b"\x02\x00\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\x00\x01\x00\x00\x00\x00\x00"  # leader
        b"\x00\x00"
        b"\x01\x00"
    )
    result = call.RESPONSE_TYPE.decode(response)
    assert result == p.ShareAckResult(0, None, [p.ShareAckPartition(TOPIC_ID, 0, 0, None)])


def test_ack_batches_group_contiguous_offsets() -> None:
    decisions = {5: p.ACCEPT, 3: p.ACCEPT, 4: p.ACCEPT, 9: p.RELEASE, 10: p.REJECT}
    assert p.ack_batches(decisions) == [
        p.AckBatch(3, 5, (p.ACCEPT,)),
        p.AckBatch(9, 10, (p.RELEASE, p.REJECT)),
    ]
    assert p.ack_batches({}) == []


def test_metadata_response() -> None:
    body = (
        b"\x00\x00\x00\x00"
        b"\x02\x00\x00\x00\x01\x0a127.0.0.1\x00\x00\x23\x84\x00\x00"  # broker 1
        b"\x04abc"  # cluster id
        b"\x00\x00\x00\x01"  # controller
        b"\x02\x00\x00\x05jobs" + TID + b"\x00"  # topic jobs
        b"\x02\x00\x00\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x07"  # partition 2, leader 1
        b"\x02\x00\x00\x00\x01\x02\x00\x00\x00\x01\x01\x00"  # replicas, isr, offline, tags
        b"\x80\x00\x00\x00\x00"  # authorized operations, tags
        b"\x00"
    )
    result = p.metadata_request(["jobs"]).RESPONSE_TYPE.decode(body)
    assert result.brokers == {1: ("127.0.0.1", 9092)}
    (topic,) = result.topics
    assert (topic.name, topic.topic_id) == ("jobs", TOPIC_ID)
    assert topic.partitions == [p.PartitionMetadata(0, 2, 1, 7)]


def test_share_fetch_record_limit_needs_version_2() -> None:
    call = p.share_fetch_request(
        "g",
        "m",
        0,
        max_wait_ms=1,
        min_bytes=1,
        max_bytes=1,
        max_records=1,
        batch_size=1,
        partitions={},
        acks={},
        forgotten={},
        acquire_mode=p.RECORD_LIMIT,
    )
    assert call.prepare({78: (1, 2)}).encode()[28:30] == b"\x01\x00"
    with pytest.raises(UnsupportedVersionError):
        call.prepare({78: (1, 1)})


def test_share_acknowledge_renew_is_version_2() -> None:
    call = p.share_acknowledge_request(
        "g", "m", 4, {TOPIC_ID: {0: [p.AckBatch(7, 7, (p.RENEW,))]}}, renew=True
    )
    assert call.prepare({79: (1, 2)}).API_VERSION == 2
    assert call.encode()[:9] == b"\x02g\x02m\x00\x00\x00\x04\x01"  # ..., is_renew_ack true
    assert b"\x02\x04\x00" in call.encode()  # one acknowledge type: 4 (Renew)
    response = (
        b"\x00\x00\x00\x00\x00\x00\x00"
        b"\x00\x00\x07\xd0"  # acquisition_lock_timeout_ms 2000 (version 2)
        b"\x01\x01\x00"
    )
    assert call.RESPONSE_TYPE.decode(response) == p.ShareAckResult(0, None, [], 2000)
    with pytest.raises(UnsupportedVersionError):
        call.prepare({79: (1, 1)})
