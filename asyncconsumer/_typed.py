"""Typed payloads: a handler annotated ``msg: Message[Model]`` gets ``msg.value``
validated into ``Model``.

``Model`` is a pydantic model (anything with ``model_validate_json`` and
``model_validate``: pydantic is not imported here, so it stays optional). The
validation runs in the record's decoder, so a payload that does not validate
raises :class:`~asyncconsumer.DeserializationError` like any codec failure and
takes the poison-pill path.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

from ._codecs import Codec, CodecSpec, resolve_codec
from ._errors import ConfigurationError
from ._message import Message

__all__ = ["payload_model", "typed_value_codec"]

_SEQUENCES = (list, Sequence, typing.Sequence)


def payload_model(fn: Callable[..., Any], *, batch: bool = False) -> Any | None:
    """The model ``T`` when ``fn``'s first parameter is ``Message[T]`` (``list[Message[T]]``
    for a batch handler) and ``T`` is a pydantic model; else ``None``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    first = params[0]
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raw = first.annotation
        if isinstance(raw, str) and "Message[" in raw:
            raise ConfigurationError(
                f"cannot resolve the annotation {raw!r} of {getattr(fn, '__qualname__', fn)!r}: "
                "define its payload model where the handler's module can see it"
            ) from exc
        return None
    annotation = hints.get(first.name)
    if batch and typing.get_origin(annotation) in _SEQUENCES:
        (annotation,) = typing.get_args(annotation) or (None,)
    if typing.get_origin(annotation) is not Message:
        return None
    (model,) = typing.get_args(annotation)
    if isinstance(model, type) and hasattr(model, "model_validate_json"):
        return model
    return None


def typed_value_codec(
    fn: Callable[..., Any], value_codec: CodecSpec | None, *, batch: bool = False
) -> CodecSpec | None:
    """``value_codec`` turned into one that validates into the handler's payload model.

    With the built-in codecs pydantic parses the bytes itself (``model_validate_json``);
    a custom codec runs first and its result is validated (``model_validate``).
    """
    model = payload_model(fn, batch=batch)
    if model is None:
        return value_codec
    if value_codec is None or value_codec in _BUILTINS:
        validate_json: Codec = model.model_validate_json
        return validate_json
    codec = resolve_codec(value_codec, what="value_codec")  # a callable, or an error
    assert codec is not None
    validate = model.model_validate

    def decode(data: bytes) -> Any:
        return validate(codec(data))

    return decode


_BUILTINS = ("bytes", "str", "json")
