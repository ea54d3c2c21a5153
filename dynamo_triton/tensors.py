"""Tensors as raw bytes: the KServe BYTES codec, numpy views over raw buffers, typed contents.

Fixed-size dtypes never touch elements in Python: ``numpy.frombuffer`` views in,
``tobytes`` out. BYTES elements are a 4-byte little-endian length then the bytes.
Encoding computes the length prefixes with numpy and joins once. Decoding uses
one numpy pass when every element has the same length (fixed-width strings,
hashes, ids); otherwise element boundaries depend on every previous length, so
a single tight loop over offsets finds them (numpy has no sequential scan).
``benchmarks/bench_bytes_codec.py`` measures both against a naive loop.

Every function taking a dtype name also takes an optional ``table`` (default: the core table);
callers pass their process's table (``Plugins.dtype_table()``) so plugin datatypes work too. A
carried plugin datatype (``FP8E4M3`` carried as ``UINT8``) decodes to a view with its own numpy
dtype over the same bytes its carrier would see.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from dynamo_triton.dtypes import DType, DTypeTable, default_table
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
_MAX_ELEMENT = 2**32 - 1

#: numpy dtype the typed contents field holds, when wider than the tensor's dtype.
_FIELD_DTYPES = {"int_contents": np.dtype(np.int32), "uint_contents": np.dtype(np.uint32)}

Raw = bytes | bytearray | memoryview


def _row(kserve_dtype: str, table: DTypeTable | None) -> DType:
    return (table or default_table()).by_kserve(kserve_dtype)


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):  # np.bytes_ is a bytes subclass
        return bytes(item)
    return str(item).encode()


def _encode_items(items: list[Any]) -> bytes:
    """Encode a flat list of elements (bytes-like in the fast path; anything else is converted)."""
    if not items:
        return b""
    try:
        encoded = _join_with_lengths(items)
    except TypeError:  # str, int, ... elements (the rare path)
        encoded = None
    if encoded is None:
        encoded = _join_with_lengths([_as_bytes(item) for item in items])
    if encoded is None:  # cannot happen: every bytes object's len() is its byte count
        raise AssertionError("BYTES encoding lost track of element lengths")
    return encoded


def _join_with_lengths(items: list[Any]) -> bytes | None:
    """Length-prefixed join; None when some element's len() is not its byte count (e.g. a memoryview of ints)."""
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    if int(lengths.max()) > _MAX_ELEMENT:
        raise InvalidRequestError(f"a BYTES element of {int(lengths.max())} bytes exceeds the 4 GiB - 1 limit")
    expected = int(lengths.sum())
    width = int(lengths[0])
    if width and (lengths == width).all():  # equal lengths: one structured numpy array, no per-element objects
        payload = b"".join(items)
        if len(payload) != expected:
            return None
        records = np.empty(len(items), dtype=np.dtype([("length", "<u4"), ("data", f"V{width}")]))
        records["length"] = width
        records["data"] = np.frombuffer(payload, dtype=f"V{width}")
        return records.tobytes()
    parts: list[Any] = [None] * (2 * len(items))
    parts[0::2] = lengths.astype("<u4").view("V4").tolist()  # V4 items are 4-byte ``bytes``
    parts[1::2] = items
    encoded = b"".join(parts)
    return encoded if len(encoded) == 4 * len(items) + expected else None


def encode_bytes(array: Any) -> bytes:
    """BYTES wire form of ``array``: every element, flattened in C order, as u32le length + bytes.

    :param array: numpy object / bytes_ / str_ array of any shape, or a (nested) sequence.
        ``str`` elements are UTF-8 encoded; other non-bytes elements are encoded as ``str(x)``.
        (numpy bytes_ arrays drop trailing NULs, as numpy itself does; use object arrays for binary.)
    :raises InvalidRequestError: an element is 4 GiB or longer.
    """
    if not isinstance(array, np.ndarray):
        array = np.asarray(array, dtype=object)
    return _encode_items(array.reshape(-1).tolist())


def _malformed(view: memoryview) -> InvalidRequestError:
    """Describe where ``view`` stops being a valid BYTES buffer (slow path, errors only)."""
    size, offset, index = view.nbytes, 0, 0
    while offset < size:
        if offset + 4 > size:
            return InvalidRequestError(
                f"malformed BYTES tensor: {size - offset} trailing byte(s) at offset {offset} are too few "
                f"for a 4-byte element length (after {index} element(s))",
                hint="every BYTES element is a 4-byte little-endian length followed by that many bytes",
            )
        (length,) = _LEN.unpack_from(view, offset)
        if offset + 4 + length > size:
            return InvalidRequestError(
                f"malformed BYTES tensor: element {index} at offset {offset} declares {length} bytes "
                f"but only {size - offset - 4} remain",
                hint="every BYTES element is a 4-byte little-endian length followed by that many bytes",
            )
        offset, index = offset + 4 + length, index + 1
    return InvalidRequestError("malformed BYTES tensor")  # unreachable for a buffer the fast walk rejected


def _byte_view(raw: Raw) -> memoryview:
    view = memoryview(raw)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def count_bytes_elements(raw: Raw) -> int:
    """Number of elements in a BYTES buffer, validating every length prefix (no element is copied).

    :raises InvalidRequestError: the buffer ends inside a length prefix or inside an element
        (truncated data, or trailing bytes that are not a whole element).
    """
    view = _byte_view(raw)
    records = _uniform_records(view)
    if records is not None:
        return records.size
    unpack, size, offset, count = _LEN.unpack_from, view.nbytes, 0, 0
    try:
        while offset < size:
            offset += 4 + unpack(view, offset)[0]
            count += 1
    except struct.error:
        raise _malformed(view) from None
    if offset != size:
        raise _malformed(view)
    return count


def _uniform_records(data: bytes | memoryview) -> np.ndarray | None:
    """(length, data) records if every element has the same length (one numpy pass), else None."""
    size = len(data)
    if size < 4:
        return None
    width = _LEN.unpack_from(data, 0)[0]
    if size % (4 + width):
        return None
    if width == 0:
        lengths = np.frombuffer(data, dtype="<u4")
        return None if lengths.any() else np.zeros(lengths.size, dtype=np.dtype([("length", "<u4")]))
    records = np.frombuffer(data, dtype=np.dtype([("length", "<u4"), ("data", f"V{width}")]))
    return records if (records["length"] == width).all() else None


def _walk_items(data: bytes) -> list[bytes]:
    unpack, size, offset = _LEN.unpack_from, len(data), 0
    items: list[bytes] = []
    append = items.append
    try:
        while offset < size:
            start = offset + 4
            offset = start + unpack(data, offset)[0]
            append(data[start:offset])
    except struct.error:
        raise _malformed(memoryview(data)) from None
    if offset != size:
        raise _malformed(memoryview(data))
    return items


def decode_bytes(raw: Raw, count: int | None = None) -> np.ndarray:
    """1-D object array of the ``bytes`` elements in ``raw``.

    :param count: when given, the number of elements ``raw`` must hold exactly.
    :raises InvalidRequestError: malformed buffer (see :func:`count_bytes_elements`) or wrong count.
    """
    data = raw if type(raw) is bytes else bytes(raw)  # elements are bytes objects: one copy at most
    records = _uniform_records(data)
    if records is None:
        items = _walk_items(data)
    elif "data" in (records.dtype.names or ()):
        items = records["data"].tolist()  # V{width} items are ``bytes`` of that length
    else:
        items = [b""] * records.size
    if count is not None and len(items) != count:
        raise InvalidRequestError(f"BYTES tensor holds {len(items)} element(s), expected {count}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _element_count(shape: Sequence[int]) -> int:
    dims = [int(dim) for dim in shape]
    if any(dim < 0 for dim in dims):
        raise InvalidRequestError(f"shape {dims} has a negative dimension; tensor shapes must be concrete")
    return math.prod(dims)


def expected_byte_size(kserve_dtype: str, shape: Sequence[int], *, table: DTypeTable | None = None) -> int | None:
    """Raw size in bytes of a ``kserve_dtype`` tensor of ``shape``; None for BYTES (variable length)."""
    itemsize = _row(kserve_dtype, table).itemsize
    return None if itemsize == 0 else _element_count(shape) * itemsize


def array_from_raw(raw: Raw, kserve_dtype: str, shape: Sequence[int], *, table: DTypeTable | None = None) -> np.ndarray:
    """A numpy view of ``raw`` (no copy; read-only when ``raw`` is ``bytes``) with ``shape``.

    BYTES decodes to an object array of ``bytes`` with ``shape``.

    :raises InvalidRequestError: the size does not match the shape (or malformed BYTES).
    """
    row = _row(kserve_dtype, table)
    dims = [int(dim) for dim in shape]
    count = _element_count(dims)
    if row.itemsize == 0:
        return decode_bytes(raw, count).reshape(dims)
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size != count * row.itemsize:
        raise InvalidRequestError(
            f"expected {count * row.itemsize} bytes for shape {dims} of {kserve_dtype}, got {size}"
        )
    return np.frombuffer(raw, dtype=row.numpy).reshape(dims)


def array_to_raw(array: Any, kserve_dtype: str | None = None, *, table: DTypeTable | None = None) -> bytes:
    """Raw bytes of ``array`` in C order.

    :param kserve_dtype: the wire dtype; default: the one of ``array.dtype``. Numeric arrays are
        converted to it with numpy's casting (BOOL is one byte per element); BYTES goes through
        :func:`encode_bytes`.
    """
    array = array if isinstance(array, np.ndarray) else np.asarray(array)
    tab = table or default_table()
    row = tab.by_kserve(kserve_dtype) if kserve_dtype else tab.by_numpy(array.dtype)
    if row.itemsize == 0:
        return encode_bytes(array)
    return np.ascontiguousarray(array, dtype=row.numpy).tobytes()


def _typed_field(row: DType) -> str:
    if row.contents_field is None:
        raise InvalidRequestError(
            f"{row.kserve} has no typed contents field in KServe v2",
            hint=f"send {row.kserve} tensors as raw bytes (raw_input_contents / raw_output_contents)",
        )
    return row.contents_field


def contents_to_raw(contents: Any, kserve_dtype: str, *, table: DTypeTable | None = None) -> bytes:
    """Raw bytes of a typed ``InferTensorContents`` (clients may send either form).

    :raises InvalidRequestError: the dtype has no typed field (FP16, BF16), or a value does not
        fit the dtype (e.g. 300 in ``int_contents`` of an INT8 tensor).
    """
    row = _row(kserve_dtype, table)
    field = _typed_field(row)
    values = getattr(contents, field)
    if row.itemsize == 0:
        return _encode_items(list(values))
    wide = _FIELD_DTYPES.get(field, row.numpy)
    array = np.asarray(values, dtype=wide)
    if wide != row.numpy and array.size:
        info = np.iinfo(row.numpy)
        low, high = array.min(), array.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidRequestError(
                f"{field} value {bad} is out of range for {kserve_dtype} [{info.min}, {info.max}]"
            )
        array = array.astype(row.numpy)
    return array.tobytes()


def raw_to_contents(raw: Raw, kserve_dtype: str, contents: Any, *, table: DTypeTable | None = None) -> None:
    """Append the elements of ``raw`` to the typed field of ``contents`` (inverse of :func:`contents_to_raw`).

    :raises InvalidRequestError: no typed field for the dtype, or ``raw`` is not whole elements.
    """
    row = _row(kserve_dtype, table)
    target = getattr(contents, _typed_field(row))
    if row.itemsize == 0:
        target.extend(decode_bytes(raw).tolist())
        return
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size % row.itemsize:
        raise InvalidRequestError(f"{size} raw bytes are not a whole number of {kserve_dtype} elements")
    target.extend(np.frombuffer(raw, dtype=row.numpy).tolist())
