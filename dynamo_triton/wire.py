"""Protobuf wire helpers for building messages around large payloads without re-encoding them.

Appending a length-delimited field to an already serialized message is valid
protobuf (fields may come in any order; repeated fields accumulate), so a
response can be its small header serialized by protobuf plus its tensor bytes,
joined once.
"""

from __future__ import annotations

__all__ = ["field_header", "varint"]


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
