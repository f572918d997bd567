"""The Kafka requests a share consumer sends (KIP-932), written from Apache Kafka
4.3's message definitions (``clients/src/main/resources/common/message/*.json``):

========================  =======  ==================================================
API                       version  used for
========================  =======  ==================================================
Metadata (3)              12       topic ids (share APIs name topics by id) and leaders
IncrementalAlterConfigs   1        a share group's ``share.auto.offset.reset``
ShareGroupHeartbeat (76)  1        join, stay, leave; the coordinator's assignment
ShareFetch (78)           1, 2     acquire records; carry acknowledgements
ShareAcknowledge (79)     1, 2     acknowledgements alone (on close); v2 renews locks
========================  =======  ==================================================

Each ``*_request`` function returns a :class:`~._wire.KafkaCall` to pass to
``AIOKafkaClient.send``; its response decodes into the dataclasses below.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ._wire import KafkaCall, Reader, Writer

__all__ = [
    "ACCEPT",
    "BATCH_OPTIMIZED",
    "GAP",
    "RECORD_LIMIT",
    "REJECT",
    "RELEASE",
    "RENEW",
    "AckBatch",
    "AcquiredRange",
    "AlterConfigsResult",
    "HeartbeatResult",
    "MetadataResult",
    "PartitionMetadata",
    "ShareAckPartition",
    "ShareAckResult",
    "ShareFetchPartition",
    "ShareFetchResult",
    "TopicMetadata",
    "ack_batches",
    "group_config_request",
    "metadata_request",
    "share_acknowledge_request",
    "share_fetch_request",
    "share_heartbeat_request",
]

# Acknowledge types (ShareFetch/ShareAcknowledge ``AcknowledgeTypes``).
GAP = 0  # an offset with no record (a control record, a compacted-away record)
ACCEPT = 1
RELEASE = 2
REJECT = 3
RENEW = 4  # KIP-1222 (ShareAcknowledge v2 with IsRenewAck): extend the lock

# ShareAcquireMode (ShareFetch v2): acquire whole record batches (max_records may be
# exceeded to a batch boundary), or never more than max_records.
BATCH_OPTIMIZED = 0
RECORD_LIMIT = 1

METADATA, ALTER_CONFIGS, HEARTBEAT, SHARE_FETCH, SHARE_ACK = 3, 44, 76, 78, 79
NULL_UUID = uuid.UUID(int=0)

Acks = Mapping[uuid.UUID, Mapping[int, Sequence["AckBatch"]]]
"""Acknowledgements to send: topic id -> partition -> batches."""


@dataclass(frozen=True, slots=True)
class AckBatch:
    """Offsets ``first..last`` (inclusive) acknowledged with ``types``: one type for
    every offset of the range, or one type per offset."""

    first: int
    last: int
    types: tuple[int, ...]


# -- Metadata v12 ---------------------------------------------------------------------


@dataclass(slots=True)
class PartitionMetadata:
    error_code: int
    partition: int
    leader: int
    leader_epoch: int


@dataclass(slots=True)
class TopicMetadata:
    error_code: int
    name: str | None
    topic_id: uuid.UUID
    partitions: list[PartitionMetadata]


@dataclass(slots=True)
class MetadataResult:
    brokers: dict[int, tuple[str, int]]
    topics: list[TopicMetadata]


def _decode_metadata(r: Reader) -> MetadataResult:
    r.int32()  # throttle_time_ms
    brokers: dict[int, tuple[str, int]] = {}
    for _ in range(r.compact_array_length()):
        node = r.int32()
        host = r.compact_string()
        port = r.int32()
        r.compact_nullable_string()  # rack
        r.tagged_fields()
        brokers[node] = (host, port)
    r.compact_nullable_string()  # cluster_id
    r.int32()  # controller_id
    topics = []
    for _ in range(max(r.compact_array_length(), 0)):
        error_code = r.int16()
        name = r.compact_nullable_string()
        topic_id = r.uuid()
        r.boolean()  # is_internal
        partitions = []
        for _ in range(max(r.compact_array_length(), 0)):
            p_error = r.int16()
            index = r.int32()
            leader = r.int32()
            epoch = r.int32()
            r.compact_int32_array()  # replicas
            r.compact_int32_array()  # isr
            r.compact_int32_array()  # offline
            r.tagged_fields()
            partitions.append(PartitionMetadata(p_error, index, leader, epoch))
        r.int32()  # topic_authorized_operations
        r.tagged_fields()
        topics.append(TopicMetadata(error_code, name, topic_id, partitions))
    r.tagged_fields()
    return MetadataResult(brokers, topics)


def metadata_request(topics: Sequence[str]) -> KafkaCall[MetadataResult]:
    """Metadata v12 for ``topics`` (no auto-creation)."""
    w = Writer()
    w.compact_array_length(len(topics))
    for name in topics:
        w.uuid(NULL_UUID)
        w.compact_string(name)
        w.tagged_fields()
    w.boolean(False)  # allow_auto_topic_creation
    w.boolean(False)  # include_topic_authorized_operations
    w.tagged_fields()
    return KafkaCall(METADATA, {12: w.getvalue()}, _decode_metadata, "Metadata")


# -- IncrementalAlterConfigs v1 (group resource) --------------------------------------------


@dataclass(slots=True)
class AlterConfigsResult:
    error_code: int
    error_message: str | None


def _decode_alter_configs(r: Reader) -> AlterConfigsResult:
    r.int32()  # throttle_time_ms
    result = AlterConfigsResult(0, None)
    for _ in range(max(r.compact_array_length(), 0)):
        code = r.int16()
        message = r.compact_nullable_string()
        r.int8()  # resource_type
        r.compact_string()  # resource_name
        r.tagged_fields()
        if code and not result.error_code:
            result = AlterConfigsResult(code, message)
    r.tagged_fields()
    return result


GROUP_RESOURCE = 32  # ConfigResource.Type.GROUP
SET = 0  # AlterConfigOp.OpType.SET


def group_config_request(
    group_id: str, configs: Mapping[str, str]
) -> KafkaCall[AlterConfigsResult]:
    """IncrementalAlterConfigs v1 setting ``configs`` on group ``group_id``."""
    w = Writer()
    w.compact_array_length(1)
    w.int8(GROUP_RESOURCE)
    w.compact_string(group_id)
    w.compact_array_length(len(configs))
    for name, value in configs.items():
        w.compact_string(name)
        w.int8(SET)
        w.compact_string(value)
        w.tagged_fields()
    w.tagged_fields()
    w.boolean(False)  # validate_only
    w.tagged_fields()
    return KafkaCall(
        ALTER_CONFIGS, {1: w.getvalue()}, _decode_alter_configs, "IncrementalAlterConfigs"
    )


# -- ShareGroupHeartbeat v1 -------------------------------------------------------------------


@dataclass(slots=True)
class HeartbeatResult:
    error_code: int
    error_message: str | None
    member_id: str | None
    member_epoch: int
    heartbeat_interval_ms: int
    # None: unchanged since the last heartbeat; else topic id -> partitions
    assignment: dict[uuid.UUID, list[int]] | None


def _decode_heartbeat(r: Reader) -> HeartbeatResult:
    r.int32()  # throttle_time_ms
    error_code = r.int16()
    error_message = r.compact_nullable_string()
    member_id = r.compact_nullable_string()
    member_epoch = r.int32()
    interval = r.int32()
    assignment: dict[uuid.UUID, list[int]] | None = None
    if r.int8() >= 0:  # a nullable struct: -1 null, 1 present
        assignment = {}
        for _ in range(max(r.compact_array_length(), 0)):
            topic_id = r.uuid()
            assignment[topic_id] = r.compact_int32_array()
            r.tagged_fields()
        r.tagged_fields()
    r.tagged_fields()
    return HeartbeatResult(error_code, error_message, member_id, member_epoch, interval, assignment)


def share_heartbeat_request(
    group_id: str, member_id: str, member_epoch: int, subscribed: Sequence[str] | None
) -> KafkaCall[HeartbeatResult]:
    """ShareGroupHeartbeat v1: epoch 0 joins, -1 leaves; ``subscribed`` None when
    unchanged since the last heartbeat."""
    w = Writer()
    w.compact_string(group_id)
    w.compact_string(member_id)
    w.int32(member_epoch)
    w.compact_string(None)  # rack_id
    if subscribed is None:
        w.compact_array_length(None)
    else:
        w.compact_array_length(len(subscribed))
        for name in subscribed:
            w.compact_string(name)
    w.tagged_fields()
    return KafkaCall(HEARTBEAT, {1: w.getvalue()}, _decode_heartbeat, "ShareGroupHeartbeat")


# -- ShareFetch v1 / ShareAcknowledge v1 ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcquiredRange:
    first: int
    last: int
    delivery_count: int


@dataclass(slots=True)
class ShareFetchPartition:
    topic_id: uuid.UUID
    partition: int
    error_code: int
    error_message: str | None
    ack_error_code: int
    ack_error_message: str | None
    leader: int
    leader_epoch: int
    records: bytes | None
    acquired: list[AcquiredRange]


@dataclass(slots=True)
class ShareFetchResult:
    error_code: int
    error_message: str | None
    lock_timeout_ms: int
    partitions: list[ShareFetchPartition]
    node_endpoints: dict[int, tuple[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class ShareAckPartition:
    topic_id: uuid.UUID
    partition: int
    error_code: int
    error_message: str | None


@dataclass(slots=True)
class ShareAckResult:
    error_code: int
    error_message: str | None
    partitions: list[ShareAckPartition]
    lock_timeout_ms: int | None = None  # version 2+


def _decode_node_endpoints(r: Reader) -> dict[int, tuple[str, int]]:
    endpoints = {}
    for _ in range(max(r.compact_array_length(), 0)):
        node = r.int32()
        host = r.compact_string()
        port = r.int32()
        r.compact_nullable_string()  # rack
        r.tagged_fields()
        endpoints[node] = (host, port)
    return endpoints


def _decode_share_fetch(r: Reader) -> ShareFetchResult:
    r.int32()  # throttle_time_ms
    error_code = r.int16()
    error_message = r.compact_nullable_string()
    lock_timeout_ms = r.int32()
    partitions = []
    for _ in range(max(r.compact_array_length(), 0)):
        topic_id = r.uuid()
        for _ in range(max(r.compact_array_length(), 0)):
            index = r.int32()
            p_error = r.int16()
            p_message = r.compact_nullable_string()
            ack_error = r.int16()
            ack_message = r.compact_nullable_string()
            leader = r.int32()
            leader_epoch = r.int32()
            r.tagged_fields()  # end of CurrentLeader
            records = r.compact_nullable_bytes()
            acquired = []
            for _ in range(max(r.compact_array_length(), 0)):
                first = r.int64()
                last = r.int64()
                count = r.int16()
                r.tagged_fields()
                acquired.append(AcquiredRange(first, last, count))
            r.tagged_fields()
            partitions.append(
                ShareFetchPartition(
                    topic_id,
                    index,
                    p_error,
                    p_message,
                    ack_error,
                    ack_message,
                    leader,
                    leader_epoch,
                    records,
                    acquired,
                )
            )
        r.tagged_fields()
    endpoints = _decode_node_endpoints(r)
    r.tagged_fields()
    return ShareFetchResult(error_code, error_message, lock_timeout_ms, partitions, endpoints)


def _decode_share_ack(r: Reader, version: int = 1) -> ShareAckResult:
    r.int32()  # throttle_time_ms
    error_code = r.int16()
    error_message = r.compact_nullable_string()
    lock_timeout_ms = r.int32() if version >= 2 else None
    partitions = []
    for _ in range(max(r.compact_array_length(), 0)):
        topic_id = r.uuid()
        for _ in range(max(r.compact_array_length(), 0)):
            index = r.int32()
            p_error = r.int16()
            p_message = r.compact_nullable_string()
            r.int32()  # current_leader.leader_id
            r.int32()  # current_leader.leader_epoch
            r.tagged_fields()
            r.tagged_fields()
            partitions.append(ShareAckPartition(topic_id, index, p_error, p_message))
        r.tagged_fields()
    _decode_node_endpoints(r)
    r.tagged_fields()
    return ShareAckResult(error_code, error_message, partitions, lock_timeout_ms)


def _write_ack_batches(w: Writer, batches: Sequence[AckBatch]) -> None:
    w.compact_array_length(len(batches))
    for batch in batches:
        w.int64(batch.first)
        w.int64(batch.last)
        w.compact_array_length(len(batch.types))
        for kind in batch.types:
            w.int8(kind)
        w.tagged_fields()


def _write_acks(w: Writer, acks: Mapping[uuid.UUID, Mapping[int, Sequence[AckBatch]]]) -> None:
    """The topics array of acknowledgements (ShareFetch, ShareAcknowledge)."""
    w.compact_array_length(len(acks))
    for topic_id, by_partition in acks.items():
        w.uuid(topic_id)
        w.compact_array_length(len(by_partition))
        for index, batches in by_partition.items():
            w.int32(index)
            _write_ack_batches(w, batches)
            w.tagged_fields()
        w.tagged_fields()


def share_fetch_request(
    group_id: str,
    member_id: str,
    session_epoch: int,
    *,
    max_wait_ms: int,
    min_bytes: int,
    max_bytes: int,
    max_records: int,
    batch_size: int,
    partitions: Mapping[uuid.UUID, Sequence[int]],
    acks: Acks,
    forgotten: Mapping[uuid.UUID, Sequence[int]],
    acquire_mode: int = 0,
) -> KafkaCall[ShareFetchResult]:
    """ShareFetch v2 (v1 where the broker has no v2 and ``acquire_mode`` is the
    default). ``partitions`` to add to (or keep in) the share session; ``acks`` for
    partitions that are or stay in it; ``forgotten`` to remove. ``acquire_mode``
    :data:`RECORD_LIMIT` makes ``max_records`` a hard limit (KIP-1206, Kafka 4.2)."""
    topics: dict[uuid.UUID, dict[int, Sequence[AckBatch]]] = {}
    for topic_id, indexes in partitions.items():
        for index in indexes:
            topics.setdefault(topic_id, {})[index] = ()
    for topic_id, by_partition in acks.items():
        for index, batches in by_partition.items():
            topics.setdefault(topic_id, {})[index] = batches
    bodies = {}
    for version in (1, 2):
        w = Writer()
        w.compact_string(group_id)
        w.compact_string(member_id)
        w.int32(session_epoch)
        w.int32(max_wait_ms)
        w.int32(min_bytes)
        w.int32(max_bytes)
        w.int32(max_records)
        w.int32(batch_size)
        if version >= 2:
            w.int8(acquire_mode)
            w.boolean(False)  # is_renew_ack
        _write_acks(w, topics)
        w.compact_array_length(len(forgotten))
        for topic_id, indexes in forgotten.items():
            w.uuid(topic_id)
            w.compact_array_length(len(indexes))
            for index in indexes:
                w.int32(index)
            w.tagged_fields()
        w.tagged_fields()
        bodies[version] = w.getvalue()
    if acquire_mode != BATCH_OPTIMIZED:
        del bodies[1]  # version 1 knows only the batch-optimized mode
    return KafkaCall(SHARE_FETCH, bodies, _decode_share_fetch, "ShareFetch")


def share_acknowledge_request(
    group_id: str, member_id: str, session_epoch: int, acks: Acks, *, renew: bool = False
) -> KafkaCall[ShareAckResult]:
    """ShareAcknowledge v1 (epoch -1 also closes the share session). ``renew``:
    version 2 with ``IsRenewAck`` (KIP-1222): the acknowledgements are :data:`RENEW`
    types, extending the records' acquisition locks (Kafka 4.2+)."""
    w = Writer()
    w.compact_string(group_id)
    w.compact_string(member_id)
    w.int32(session_epoch)
    if renew:
        w.boolean(True)  # is_renew_ack (version 2)
    _write_acks(w, acks)
    w.tagged_fields()
    if renew:
        return KafkaCall(
            SHARE_ACK,
            {2: w.getvalue()},
            lambda r: _decode_share_ack(r, 2),
            "ShareAcknowledge",
        )
    return KafkaCall(SHARE_ACK, {1: w.getvalue()}, _decode_share_ack, "ShareAcknowledge")


def ack_batches(decisions: Mapping[int, int]) -> list[AckBatch]:
    """Acknowledgement batches for ``offset -> type``: contiguous offsets share a
    batch; a batch of one type sends that type once, else one type per offset."""
    batches: list[AckBatch] = []
    offsets = sorted(decisions)
    i = 0
    while i < len(offsets):
        j = i
        while j + 1 < len(offsets) and offsets[j + 1] == offsets[j] + 1:
            j += 1
        types = tuple(decisions[o] for o in offsets[i : j + 1])
        if all(t == types[0] for t in types):
            types = types[:1]
        batches.append(AckBatch(offsets[i], offsets[j], types))
        i = j + 1
    return batches
