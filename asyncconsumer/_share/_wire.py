"""A small encoder/decoder for Kafka's flexible-version wire format, and the adapter
that sends our requests through aiokafka's connections.

aiokafka's protocol layer has compact strings, compact arrays and tagged fields, but
no UUID or nullable-struct types, no Metadata version that carries topic ids, and its
``TaggedFields.encode`` writes no sizes. The share-group APIs (KIP-932) need all of
these, so the few messages we send are written against :class:`Writer` and read with
:class:`Reader` here, typed, and checked byte for byte in ``tests/unit/test_share_protocol.py``.

Everything is big-endian; "compact" lengths are unsigned varints of ``length + 1``
(0 meaning null); every struct ends with a tagged-field section, which we write empty
and skip when reading.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Generic, TypeVar

__all__ = ["KafkaCall", "Reader", "Writer", "decode_uvarint", "encode_uvarint"]

T = TypeVar("T")

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


def encode_uvarint(value: int) -> bytes:
    """An unsigned varint (7 bits a byte, least significant first)."""
    if value < 0:
        raise ValueError(f"unsigned varint cannot be negative: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """``(value, next position)`` of the unsigned varint at ``pos``."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("buffer underrun reading a varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


class Writer:
    """Appends Kafka wire types to a buffer."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def int8(self, value: int) -> None:
        self.buf += _I8.pack(value)

    def int16(self, value: int) -> None:
        self.buf += _I16.pack(value)

    def int32(self, value: int) -> None:
        self.buf += _I32.pack(value)

    def int64(self, value: int) -> None:
        self.buf += _I64.pack(value)

    def boolean(self, value: bool) -> None:
        self.buf.append(1 if value else 0)

    def uuid(self, value: uuid.UUID) -> None:
        self.buf += value.bytes

    def uvarint(self, value: int) -> None:
        self.buf += encode_uvarint(value)

    def string(self, value: str | None) -> None:
        """A classic (non-compact) nullable string: int16 length, -1 for null
        (request headers use it even in flexible versions)."""
        if value is None:
            self.int16(-1)
            return
        data = value.encode()
        self.int16(len(data))
        self.buf += data

    def compact_string(self, value: str | None) -> None:
        if value is None:
            self.uvarint(0)
            return
        data = value.encode()
        self.uvarint(len(data) + 1)
        self.buf += data

    def compact_array_length(self, length: int | None) -> None:
        """The length of a compact array that follows (``None``: a null array)."""
        self.uvarint(0 if length is None else length + 1)

    def tagged_fields(self) -> None:
        """An empty tagged-field section (we send no tagged fields)."""
        self.buf.append(0)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class Reader:
    """Reads Kafka wire types from a buffer, front to back."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, size: int) -> int:
        start = self.pos
        end = start + size
        if end > len(self.data):
            raise ValueError(f"buffer underrun: need {size} bytes at {start} of {len(self.data)}")
        self.pos = end
        return start

    def int8(self) -> int:
        return int(_I8.unpack_from(self.data, self._take(1))[0])

    def int16(self) -> int:
        return int(_I16.unpack_from(self.data, self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self.data, self._take(4))[0])

    def int64(self) -> int:
        return int(_I64.unpack_from(self.data, self._take(8))[0])

    def boolean(self) -> bool:
        return self.data[self._take(1)] != 0

    def uuid(self) -> uuid.UUID:
        start = self._take(16)
        return uuid.UUID(bytes=bytes(self.data[start : start + 16]))

    def uvarint(self) -> int:
        value, self.pos = decode_uvarint(self.data, self.pos)
        return value

    def compact_nullable_string(self) -> str | None:
        length = self.uvarint() - 1
        if length < 0:
            return None
        start = self._take(length)
        return self.data[start : start + length].decode()

    def compact_string(self) -> str:
        value = self.compact_nullable_string()
        if value is None:
            raise ValueError("null where a non-nullable string was expected")
        return value

    def compact_nullable_bytes(self) -> bytes | None:
        length = self.uvarint() - 1
        if length < 0:
            return None
        start = self._take(length)
        return self.data[start : start + length]

    def compact_array_length(self) -> int:
        """The element count of the compact array that follows; -1 for null."""
        return self.uvarint() - 1

    def compact_int32_array(self) -> list[int]:
        return [self.int32() for _ in range(max(self.compact_array_length(), 0))]

    def tagged_fields(self) -> None:
        """Skip a tagged-field section (we know no tagged fields of these messages)."""
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            size = self.uvarint()
            self._take(size)


# -- sending through aiokafka -----------------------------------------------------------


class _Header:
    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def encode(self) -> bytes:
        return self._data


class _ResponseHeader:
    __slots__ = ("correlation_id",)

    def __init__(self, correlation_id: int) -> None:
        self.correlation_id = correlation_id


class _ResponseType(Generic[T]):
    """What aiokafka's connection calls ``RESPONSE_TYPE.decode(buffer)`` on."""

    __slots__ = ("_decode",)

    def __init__(self, decode: Callable[[Reader], T]) -> None:
        self._decode = decode

    def decode(self, data: BytesIO | bytes) -> T:
        raw = data if isinstance(data, bytes) else data.read()
        return self._decode(Reader(raw))


class KafkaCall(Generic[T]):
    """One request of ours, shaped for aiokafka's connection (``client.send(node, call)``).

    aiokafka 0.14's connection calls ``prepare(versions)`` (the broker's supported
    versions) and then ``build_request_header``, ``encode``,
    ``parse_response_header`` and ``RESPONSE_TYPE.decode`` on the result; every
    request here is a flexible version (request header v2, response header v1).
    """

    FLEXIBLE_VERSION = True

    def __init__(
        self,
        api_key: int,
        bodies: Mapping[int, bytes],
        decode: Callable[[Reader], T],
        name: str,
    ) -> None:
        self.API_KEY = api_key
        self.API_VERSION = max(bodies)
        self.RESPONSE_TYPE = _ResponseType(decode)
        self._bodies = dict(bodies)  # version -> encoded body (the response reads alike)
        self._name = name

    def prepare(self, versions: dict[int, tuple[int, int]]) -> KafkaCall[T]:
        """Pick the highest of our versions that the broker supports."""
        supported = versions.get(self.API_KEY)
        if supported is None:
            return self
        usable = [v for v in self._bodies if supported[0] <= v <= supported[1]]
        if not usable:
            from aiokafka.errors import UnsupportedVersionError

            raise UnsupportedVersionError(
                f"the broker supports {self._name} versions {supported[0]}-{supported[1]}, "
                f"asyncconsumer sends versions {sorted(self._bodies)}"
            )
        self.API_VERSION = max(usable)
        return self

    def build_request_header(self, correlation_id: int, client_id: str) -> _Header:
        w = Writer()
        w.int16(self.API_KEY)
        w.int16(self.API_VERSION)
        w.int32(correlation_id)
        w.string(client_id)
        w.tagged_fields()
        return _Header(w.getvalue())

    def encode(self) -> bytes:
        return self._bodies[self.API_VERSION]

    def parse_response_header(self, data: BytesIO | bytes) -> _ResponseHeader:
        buffer = data if isinstance(data, BytesIO) else BytesIO(data)
        correlation_id = _I32.unpack(buffer.read(4))[0]
        # the header's tagged fields: a count, then (tag, size, bytes) each
        count = _read_uvarint_io(buffer)
        for _ in range(count):
            _read_uvarint_io(buffer)
            buffer.read(_read_uvarint_io(buffer))
        return _ResponseHeader(int(correlation_id))

    def __repr__(self) -> str:
        return f"{self._name}(v{self.API_VERSION}, {len(self.encode())} bytes)"


def _read_uvarint_io(buffer: BytesIO) -> int:
    value = shift = 0
    while True:
        chunk = buffer.read(1)
        if not chunk:
            raise ValueError("buffer underrun reading a varint")
        value |= (chunk[0] & 0x7F) << shift
        if not chunk[0] & 0x80:
            return value
        shift += 7
