import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from asyncconsumer import ConfigurationError, DeserializationError, Message, TopicPartition
from asyncconsumer._codecs import resolve_codec
from asyncconsumer._message import as_record, make_decoder


def record(
    key: bytes | None = b"k", value: bytes | None = b"v", offset: int = 7
) -> Message[bytes | None]:
    return Message(
        topic="t",
        partition=2,
        offset=offset,
        key=key,
        value=value,
        headers=(("h", b"1"),),
        timestamp=1234,
    )


def test_builtin_codecs() -> None:
    assert resolve_codec("bytes") is None  # identity: no call per record
    str_codec = resolve_codec("str")
    json_codec = resolve_codec("json")
    assert str_codec is not None
    assert json_codec is not None
    assert str_codec("é".encode()) == "é"
    assert json_codec(b'{"a": [1]}') == {"a": [1]}
    assert resolve_codec(None) is None


def test_callable_codec_is_used_as_is() -> None:
    def upper(data: bytes) -> str:
        return data.decode().upper()

    assert resolve_codec(upper) is upper


@pytest.mark.parametrize("spec", ["yaml", "JSON", 3])
def test_unknown_codec_is_a_configuration_error(spec: Any) -> None:
    with pytest.raises(ConfigurationError, match="value_codec"):
        resolve_codec(spec, what="value_codec")


def test_without_codecs_there_is_nothing_to_decode() -> None:
    # The raw record is the message: no call, no copy per record.
    assert make_decoder(None, None) is None


def test_a_consumer_record_becomes_a_raw_message() -> None:
    msg = as_record(ConsumerRecord("t", 2, 7, 1234, 0, b"k", b"v", None, 1, 1, [("h", b"1")]))
    assert type(msg) is Message
    assert msg == Message("t", 2, 7, b"k", b"v", (("h", b"1"),), 1234)
    assert msg.tp == TopicPartition("t", 2)
    assert "t[2]@7" in repr(msg)


def test_codecs_apply_to_key_and_value_and_none_stays_none() -> None:
    decode = make_decoder(resolve_codec("str"), json.loads)
    assert decode is not None
    msg = decode(record(key=b"user-1", value=b'{"n": 1}'))
    assert (msg.key, msg.value) == ("user-1", {"n": 1})
    tombstone = decode(record(key=None, value=None))
    assert (tombstone.key, tombstone.value) == (None, None)


def test_message_is_immutable() -> None:
    msg = record()
    with pytest.raises(AttributeError):
        msg.value = b"other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "value", "field"), [(b"\xff", b"{}", "key"), (b"k", b"{nope", "value")]
)
def test_decode_failure_names_the_record(key: bytes, value: bytes, field: str) -> None:
    decode = make_decoder(resolve_codec("str"), resolve_codec("json"))
    assert decode is not None
    with pytest.raises(DeserializationError) as info:
        decode(record(key=key, value=value, offset=41))
    err = info.value
    assert (err.topic, err.partition, err.offset, err.field) == ("t", 2, 41, field)
    assert f"the {field} of the record at t[2]@41" in str(err)
    assert err.__cause__ is not None
