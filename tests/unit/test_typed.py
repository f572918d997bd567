"""Typed payloads: which handlers get validation, and what a bad payload raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from asyncconsumer import ConfigurationError, ConsumerApp, DeserializationError, Message
from asyncconsumer._message import Record, make_decoder
from asyncconsumer._typed import payload_model, typed_value_codec


class Order(BaseModel):
    id: int


async def typed(msg: Message[Order]) -> None: ...


async def batch(msgs: list[Message[Order]]) -> None: ...


async def raw(msg: Message[bytes]) -> None: ...


async def untyped(msg: Any) -> None: ...


def blocking(msg: Message[Order]) -> None: ...


def record(value: bytes, offset: int = 7) -> Record:
    return Message("t", 0, offset, None, value, (), 0)


def test_the_model_comes_from_the_first_parameter() -> None:
    assert payload_model(typed) is Order
    assert payload_model(batch, batch=True) is Order
    assert payload_model(blocking) is Order
    assert payload_model(batch) is None  # a list is not a Message for a per-record handler
    assert payload_model(raw) is None
    assert payload_model(untyped) is None
    assert payload_model(lambda: None) is None


def test_an_unresolvable_payload_annotation_is_a_configuration_error() -> None:
    async def handler(msg: Message[Missing]) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ConfigurationError, match="cannot resolve"):
        payload_model(handler)


def test_builtin_codecs_let_pydantic_parse_and_custom_ones_run_first() -> None:
    for spec in (None, "bytes", "str", "json"):
        codec = typed_value_codec(typed, spec)
        assert callable(codec)
        assert codec(b'{"id": 4}') == Order(id=4)
    seen: list[bytes] = []

    def custom(data: bytes) -> Any:
        seen.append(data)
        return json.loads(data[1:])

    codec = typed_value_codec(typed, custom)
    assert callable(codec)
    assert codec(b'!{"id": 5}') == Order(id=5)
    assert seen == [b'!{"id": 5}']
    assert typed_value_codec(raw, "json") == "json"  # untouched without a model
    with pytest.raises(ConfigurationError, match="unknown value_codec"):
        typed_value_codec(typed, "yaml")  # type: ignore[arg-type]


def test_a_payload_that_does_not_validate_is_a_deserialization_error() -> None:
    codec = typed_value_codec(typed, None)
    assert callable(codec)
    decode = make_decoder(None, codec)
    assert decode is not None
    assert decode(record(b'{"id": 1}')).value == Order(id=1)
    with pytest.raises(DeserializationError) as caught:
        decode(record(b'{"id": "x"}', offset=9))
    assert (caught.value.offset, caught.value.field) == (9, "value")


def test_apps_register_typed_and_def_handlers() -> None:
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9", group_id="g")
    app.handler("a")(typed)
    app.handler("b")(blocking)
    app.batch_handler("c")(batch)
    for topic in "abc":
        spec = app._registry.resolve(topic)
        assert spec.decode is not None
        message = spec.decode(record(b'{"id": 2}'))
        assert message.value == Order(id=2)
