"""Protobuf wire helpers for messages that carry large payloads, without copying the payloads.

Appending a length-delimited field to an already serialized message is valid
protobuf (fields may come in any order; repeated fields accumulate), so a
response can be its small header serialized by protobuf followed by its tensor
bytes, written back to back.

The other way round, :func:`split_field` walks the top-level fields of a serialized
message and takes out every value of one length-delimited field (the tensors of
``raw_input_contents``) as views into the received bytes, leaving a small header
that protobuf parses in microseconds: a 64 MiB request is never copied to be read.
"""

from __future__ import annotations

__all__ = ["WireError", "field_header", "split_field", "varint"]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if value < 0:
        raise ValueError(f"varints here encode non-negative values, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_header(field_number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field (wire type 2) holding ``length`` bytes."""
    return varint(field_number << 3 | 2) + varint(length)


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise WireError(f"truncated or overlong varint at byte {pos}")


def split_field(payload: bytes | bytearray | memoryview, field_number: int) -> tuple[bytes, list[memoryview]]:
    """Split a serialized message into (every other field, the values of ``field_number`` as views).

    The header keeps the other fields' bytes in their order, so parsing it gives the message
    without that field; the views point into ``payload`` (no copy) and keep it alive.

    :raises WireError: truncated data, an unknown wire type, or ``field_number`` not length-delimited.
    """
    data = memoryview(payload).cast("B") if not isinstance(payload, memoryview) else payload.cast("B")
    end = len(data)
    values: list[memoryview] = []
    header: list[memoryview] = []
    kept_from = pos = 0
    while pos < end:
        start = pos
        key, pos = _read_varint(data, pos, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _read_varint(data, pos, end)
            if pos + length > end:
                raise WireError(f"field {number} claims {length} bytes but only {end - pos} remain")
            if number == field_number:
                if start > kept_from:
                    header.append(data[kept_from:start])
                values.append(data[pos : pos + length])
                kept_from = pos + length
            pos += length
        elif number == field_number:
            raise WireError(f"field {field_number} has wire type {wire_type}, expected 2 (length-delimited)")
        elif wire_type == 0:
            _, pos = _read_varint(data, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type} for field {number} at byte {start}")
        if pos > end:
            raise WireError(f"field {number} runs past the end of the message")
    if not values:
        return bytes(data), values
    if kept_from < end:
        header.append(data[kept_from:end])
    return b"".join(header), values
