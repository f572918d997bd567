"""Key and value codecs: ``"bytes"`` (default), ``"str"``, ``"json"`` or any callable.

A codec turns the raw bytes of a record's key or value into a Python object. A
``None`` key or value (no key; a tombstone) stays ``None`` whatever the codec.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from ._errors import ConfigurationError

__all__ = ["Codec", "CodecSpec", "resolve_codec"]

Codec: TypeAlias = Callable[[bytes], Any]
"""A decoder: raw bytes in, Python object out; raising means the record is malformed."""

CodecSpec: TypeAlias = Literal["bytes", "str", "json"] | Codec
"""What users pass as ``key_codec=`` / ``value_codec=``: a built-in name or a callable."""


def _decode_str(data: bytes) -> str:
    return data.decode("utf-8")


_BUILTIN: dict[str, Codec | None] = {
    "bytes": None,  # identity: no call at all on the hot path
    "str": _decode_str,
    "json": json.loads,
}


def resolve_codec(spec: CodecSpec | None, *, what: str = "codec") -> Codec | None:
    """Return the decoder for ``spec``; ``None`` means identity (raw bytes).

    Raises :class:`ConfigurationError` for an unknown name or a non-callable.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            return _BUILTIN[spec]
        except KeyError:
            known = ", ".join(repr(name) for name in _BUILTIN)
            raise ConfigurationError(
                f"unknown {what} {spec!r}: use one of {known} or a callable"
            ) from None
    if callable(spec):
        return spec
    raise ConfigurationError(f"{what} must be a codec name or a callable, not {spec!r}")
