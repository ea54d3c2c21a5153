"""JSON tensor data (the KServe v2 REST ``data`` field) <-> raw tensor bytes, with numpy in one step per tensor.

Input: ``np.asarray(data)`` once, then vectorised checks (kind, range, element count)
and one ``tobytes``. Nested arrays are accepted and flattened in row-major order, as
Triton does. Unlike Triton 2.51 we never convert silently: a float sent for an
integer tensor, an integer out of the dtype's range (Triton wraps 99999999999 into
INT32 1215752191) or a number that overflows FP16 / BF16 is an error. FP16 and
BF16 travel as JSON numbers both ways (Triton refuses them in JSON).

Output: ``np.frombuffer(raw, dtype).tolist()``, flat, as Triton writes it. BYTES
elements are JSON strings, so they must be UTF-8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dynamo_triton.dtypes import DType, DTypeTable
from dynamo_triton.errors import DyntritonError, InvalidRequestError, UnknownNameError
from dynamo_triton.tensors import decode_bytes, encode_bytes

__all__ = ["data_to_raw", "raw_to_data", "row_for"]

_KIND_NAMES = {"f": "non-integer numbers", "b": "booleans", "U": "strings"}
_BINARY_HINT = 'request the output with "parameters": {"binary_data": true} to receive its bytes as they are'


def row_for(datatype: str, table: DTypeTable, what: str) -> DType:
    """The dtype row of ``datatype``; InvalidRequestError naming ``what`` (e.g. "input 'X'") when unknown."""
    try:
        return table.by_kserve(datatype)
    except UnknownNameError as exc:
        raise InvalidRequestError(f"{what}: {exc.message}") from None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


def _flat_strings(name: str, data: list[Any]) -> np.ndarray:
    items = _flatten(data)
    flat = np.empty(len(items), dtype=object)
    flat[:] = items
    for index, item in enumerate(flat):
        if type(item) is not str:
            raise InvalidRequestError(
                f"input '{name}': BYTES element {index} is a JSON {_json_type(item)}; expected a string "
                "(send non-text bytes with the binary tensor extension)"
            )
    return flat


def _flatten(data: list[Any]) -> list[Any]:
    """The leaves of a ragged nested list, in order (the slow path: regular nesting goes to numpy whole)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_count(name: str, shape: Sequence[int], got: int, count: int) -> None:
    if got != count:
        raise InvalidRequestError(
            f"input '{name}': shape {list(shape)} holds {count} element(s) but 'data' has {got}; "
            "send exactly one value per element (flat or nested in row-major order)"
        )


def data_to_raw(name: str, datatype: str, shape: Sequence[int], data: Any, table: DTypeTable) -> bytes:
    """Raw little-endian bytes of the JSON ``data`` of input ``name`` (BYTES: 4-byte length + UTF-8 each).

    :raises InvalidRequestError: unknown datatype, wrong element count, ragged nesting, a value of the
        wrong JSON type for the datatype, or a value out of the datatype's range.
    """
    row = row_for(datatype, table, f"input '{name}'")
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    if row.itemsize == 0:
        flat = _flat_strings(name, data)
        _check_count(name, shape, flat.size, count)
        return encode_bytes(flat)
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nesting: Triton reads the values in order, the shape comes from 'shape'
        values = np.asarray(_flatten(data))
    _check_count(name, shape, values.size, count)
    if values.size == 0:
        return b""
    target = row.numpy
    kind = values.dtype.kind
    if target == np.bool_:
        if kind != "b":
            raise InvalidRequestError(f"input '{name}': BOOL data must be JSON true/false, got {values.dtype.name}")
    elif target.kind in "iu":
        info = np.iinfo(target)
        if kind in "iu":
            low, high = values.min(), values.max()
        else:  # numpy made floats or objects of them: exact only if every leaf is an int (e.g. UINT64 > 2**63)
            leaves = _flatten(data)
            if any(type(leaf) is not int for leaf in leaves):
                what = _KIND_NAMES.get(kind, "values of mixed types")
                raise InvalidRequestError(f"input '{name}': {datatype} data holds {what}; expected integers")
            low, high = min(leaves), max(leaves)
            if info.min <= low and high <= info.max:
                values = np.array(leaves, dtype=target)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidRequestError(
                f"input '{name}': value {bad} is out of range for {datatype} [{info.min}, {info.max}]"
            )
    else:  # floating point, incl. BF16 (ml_dtypes) and plugin float rows
        if kind not in "iuf":
            raise InvalidRequestError(f"input '{name}': {datatype} data must be JSON numbers")
        with np.errstate(over="ignore", invalid="ignore"):
            converted = values.astype(target)
        overflow = np.isinf(converted.astype(np.float64)) & np.isfinite(values.astype(np.float64))
        if overflow.any():
            bad = values.reshape(-1)[int(np.argmax(overflow.reshape(-1)))]
            raise InvalidRequestError(f"input '{name}': value {bad} overflows {datatype}")
        return converted.tobytes()
    return np.ascontiguousarray(values, dtype=target).tobytes()


def raw_to_data(name: str, datatype: str, raw: bytes | memoryview, table: DTypeTable) -> list[Any]:
    """The flat JSON values of output ``name``'s raw bytes.

    :raises InvalidRequestError: a BYTES element is not UTF-8 (JSON strings cannot carry it; the
        hint says to ask for binary data).
    :raises DyntritonError: (INTERNAL) raw bytes that are not whole elements: a worker bug.
    """
    row = row_for(datatype, table, f"output '{name}'")
    if row.itemsize == 0:
        items = decode_bytes(raw).tolist()
        try:
            return [item.decode() for item in items]
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(
                f"output '{name}' holds bytes that are not UTF-8 ({exc.reason} at byte {exc.start} of an element), "
                "which a JSON string cannot carry",
                hint=_BINARY_HINT,
            ) from None
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size % row.itemsize:
        raise DyntritonError(f"output '{name}': {size} bytes are not a whole number of {datatype} elements")
    values = np.frombuffer(raw, dtype=row.numpy)
    if row.numpy == np.float16 or row.numpy.kind not in "biuf":  # FP16, BF16: float32 holds them exactly
        values = values.astype(np.float32)
    return values.tolist()
