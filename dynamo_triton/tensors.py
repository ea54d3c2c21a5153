"""Tensors as raw bytes: the KServe BYTES codec, numpy views over raw buffers, typed contents.

The hot path never walks tensor elements in Python for fixed-size dtypes
(``numpy.frombuffer`` views, ``tobytes``). BYTES elements are variable-length
(4-byte little-endian length, then the bytes), so finding element boundaries is
inherently sequential; encoding is vectorised with numpy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from dynamo_triton.dtypes import default_table
from dynamo_triton.errors import InvalidRequestError

__all__ = [
    "array_from_raw",
    "array_to_raw",
    "contents_to_raw",
    "count_bytes_elements",
    "decode_bytes",
    "encode_bytes",
    "expected_byte_size",
    "raw_to_contents",
]

_LEN = struct.Struct("<I")


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytearray, memoryview, np.bytes_)):
        return bytes(item)
    return str(item).encode()


def encode_bytes(array: Any) -> bytes:
    """BYTES wire form of ``array`` (any shape, C order): each element as u32le length + bytes.

    The length prefixes are computed and interleaved with numpy (one ``np.insert``),
    not element by element.
    """
    flat = array.reshape(-1) if isinstance(array, np.ndarray) else np.asarray(array, dtype=object).reshape(-1)
    items = [x if type(x) is bytes else _as_bytes(x) for x in flat.tolist()]
    if not items:
        return b""
    lengths = np.fromiter(map(len, items), dtype="<u4", count=len(items))
    starts = np.zeros(len(items), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    payload = np.frombuffer(b"".join(items), dtype=np.uint8)
    return np.insert(payload, np.repeat(starts, 4), lengths.view(np.uint8)).tobytes()


def _walk(raw: bytes | memoryview) -> list[tuple[int, int]]:
    """(start, end) of every element; raises InvalidRequestError on malformed data."""
    view = memoryview(raw).cast("B")
    size, offset = len(view), 0
    spans: list[tuple[int, int]] = []
    while offset < size:
        if offset + 4 > size:
            raise InvalidRequestError(
                f"malformed BYTES tensor: {size - offset} trailing byte(s) at offset {offset} are too few "
                "for a 4-byte element length"
            )
        (length,) = _LEN.unpack_from(view, offset)
        start = offset + 4
        end = start + length
        if end > size:
            raise InvalidRequestError(
                f"malformed BYTES tensor: element {len(spans)} at offset {offset} declares {length} bytes "
                f"but only {size - start} remain"
            )
        spans.append((start, end))
        offset = end
    return spans


def count_bytes_elements(raw: bytes | memoryview) -> int:
    """Number of elements in a BYTES buffer (validates every length prefix)."""
    return len(_walk(raw))


def decode_bytes(raw: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """1-D object array of the ``bytes`` elements in ``raw``; with ``count``, it must match exactly."""
    spans = _walk(raw)
    if count is not None and len(spans) != count:
        raise InvalidRequestError(f"BYTES tensor holds {len(spans)} element(s), expected {count}")
    data = bytes(raw) if isinstance(raw, memoryview) else raw
    out = np.empty(len(spans), dtype=object)
    for index, (start, end) in enumerate(spans):
        out[index] = data[start:end]
    return out


def expected_byte_size(kserve_dtype: str, shape: Sequence[int]) -> int | None:
    """Raw size in bytes of a tensor, or None for BYTES (variable length)."""
    itemsize = default_table().by_kserve(kserve_dtype).itemsize
    if itemsize == 0:
        return None
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * itemsize


def array_from_raw(raw: bytes | memoryview, kserve_dtype: str, shape: Sequence[int]) -> np.ndarray:
    """A numpy view (no copy) of ``raw`` with ``shape``; BYTES decodes to an object array."""
    row = default_table().by_kserve(kserve_dtype)
    shape = [int(d) for d in shape]
    count = int(np.prod(shape)) if shape else 1
    if row.itemsize == 0:
        return decode_bytes(raw, count).reshape(shape)
    expected = count * row.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"expected {expected} bytes for shape {shape} of {kserve_dtype}, got {len(raw)}",
        )
    return np.frombuffer(raw, dtype=row.numpy).reshape(shape)


def array_to_raw(array: Any, kserve_dtype: str | None = None) -> bytes:
    """Raw bytes of ``array`` in C order; BYTES through :func:`encode_bytes`, BOOL one byte each."""
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    row = default_table().by_kserve(kserve_dtype) if kserve_dtype else default_table().by_numpy(array.dtype)
    if row.itemsize == 0:
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=row.numpy).tobytes()


def contents_to_raw(contents: Any, kserve_dtype: str) -> bytes:
    """Typed ``InferTensorContents`` -> raw bytes (clients may send either form)."""
    row = default_table().by_kserve(kserve_dtype)
    if row.contents_field is None:
        raise InvalidRequestError(
            f"{kserve_dtype} has no typed contents field in KServe v2; send it in raw_input_contents"
        )
    values = getattr(contents, row.contents_field)
    if row.itemsize == 0:
        return encode_bytes(np.array(list(values), dtype=object))
    return np.asarray(values, dtype=row.numpy).tobytes()


def raw_to_contents(raw: bytes | memoryview, kserve_dtype: str, contents: Any) -> None:
    """Fill a typed ``InferTensorContents`` from raw bytes (the inverse of :func:`contents_to_raw`)."""
    row = default_table().by_kserve(kserve_dtype)
    if row.contents_field is None:
        raise InvalidRequestError(f"{kserve_dtype} has no typed contents field in KServe v2")
    field = getattr(contents, row.contents_field)
    if row.itemsize == 0:
        field.extend(decode_bytes(raw).tolist())
    else:
        field.extend(np.frombuffer(raw, dtype=row.numpy).tolist())
