"""Reading the top-level fields of a serialized protobuf message without parsing it.

A worker's ``ModelInferResponse`` is a small header plus its tensors in
``raw_output_contents``. Walking the top-level tags (a handful of varints) lets the
REST frontend parse only the header with protobuf and take each tensor as a
``memoryview`` of the bytes the worker sent: no tensor is copied to be read.
"""

from __future__ import annotations

from collections.abc import Iterator

from dynamo_triton.errors import DyntritonError

__all__ = ["split_field"]


def _varint(data: memoryview, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if offset >= len(data):
            raise DyntritonError("a worker sent a truncated protobuf message (varint runs past the end)")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start of the tag, start of the value, end) of every top-level field."""
    offset, size = 0, len(data)
    while offset < size:
        start = offset
        key, offset = _varint(data, offset)
        wire_type = key & 7
        if wire_type == 2:
            length, offset = _varint(data, offset)
            value_start, offset = offset, offset + length
        elif wire_type == 0:
            value_start = offset
            _, offset = _varint(data, offset)
        elif wire_type in (1, 5):
            value_start, offset = offset, offset + (8 if wire_type == 1 else 4)
        else:
            raise DyntritonError(f"a worker sent a protobuf message with unsupported wire type {wire_type}")
        if offset > size:
            raise DyntritonError("a worker sent a truncated protobuf message (a field runs past the end)")
        yield key >> 3, start, value_start, offset


def split_field(data: bytes, field_number: int) -> tuple[bytes, list[memoryview]]:
    """Split ``data`` into (the message without ``field_number``, that repeated bytes field's values as views).

    The views share ``data``'s memory; the first element is the rest of the message, re-joined
    in field order (small: everything but the tensors).
    """
    view = memoryview(data)
    rest: list[memoryview] = []
    values: list[memoryview] = []
    for number, start, value_start, end in _fields(view):
        if number == field_number:
            values.append(view[value_start:end])
        else:
            rest.append(view[start:end])
    return b"".join(rest), values
