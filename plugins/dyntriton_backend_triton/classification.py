"""The KServe classification extension, computed as Triton's frontends compute it.

A requested output with the parameter ``classification = K`` (``int64_param`` over gRPC;
``tritonclient``'s ``InferRequestedOutput(name, class_count=K)``) is answered not as its tensor
but as a BYTES tensor of the K highest values of each batch item, each ``"value:index"`` or
``"value:index:label"``. Triton does this in its gRPC/HTTP frontends (``src/classification.cc``,
``src/grpc/infer_handler.h``), not in the core, so a process embedding the C API must do it too.
What Triton does, and so what this module does:

- only UINT8-64, INT8-64, FP32 and FP64 outputs; any other type is INVALID_ARG
  ``class result not available for output due to unsupported type 'FP16'``;
- for a model with a batch dimension (``max_batch_size > 0``) each ``shape[0]`` item is ranked
  on its own, over all of its elements flattened; otherwise the whole tensor is one item;
- the answer has ``min(K, elements per item)`` entries per item, shape ``[batch, that]``
  (``[that]`` without a batch dimension, or when the batch is 0), datatype BYTES;
- the order is ``std::sort`` by ``>``: ties as libstdc++ leaves them (see ``stdsort``);
- values print as ``std::to_string`` does: integers in decimal, FP32/FP64 as ``%f``
  (``16.000000``, ``-nan``, ``inf``); the index in decimal; the label, when the model's
  ``label_filename`` has a non-empty line for that index, after a second colon;
- K is read as an unsigned 32-bit number (``uint32_t`` in Triton): K < 1 is INVALID_ARG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.tensors import encode_bytes
from dyntriton_backend_triton.stdsort import THRESHOLD, reference_sort_order, sort_order, stable_descending

__all__ = ["SUPPORTED", "class_count", "classify", "top_k", "unsupported_type_error"]

#: Output datatypes Triton classifies, with the numpy type of their elements.
SUPPORTED: dict[str, np.dtype] = {
    name: np.dtype(kind)
    for name, kind in {
        "UINT8": "<u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "<i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}

#: A function giving the label of a class index (None when the model has none for it).
LabelOf = Callable[[int], bytes | None]


def class_count(output: service_pb2.ModelInferRequest.InferRequestedOutputTensor) -> int | None:
    """K asked for ``output`` (``parameters["classification"]``), or None when it is not asked.

    :raises InvalidRequestError: the parameter is not an ``int64_param``, is below 1, or comes
        with a ``shared_memory_region`` (Triton's checks and wording).
    """
    if "classification" not in output.parameters:
        return None
    parameter = output.parameters["classification"]
    if parameter.WhichOneof("parameter_choice") != "int64_param":
        raise InvalidRequestError(
            f"invalid value type for 'classification' parameter, expected int64_param "
            f"(requested output '{output.name}')",
            hint="set it as an integer: tritonclient's InferRequestedOutput(name, class_count=K)",
        )
    count = parameter.int64_param
    if count <= 0:
        raise InvalidRequestError(
            f"invalid value for 'classification' parameter, expected >= 1 (requested output '{output.name}' "
            f"asks for {count} classes)",
            hint="ask for the K >= 1 best classes, or leave the parameter out to get the raw tensor",
        )
    if "shared_memory_region" in output.parameters:
        raise InvalidRequestError(
            f"output can't set both 'shared_memory_region' and 'classification' (requested output '{output.name}')"
        )
    return count & 0xFFFFFFFF  # Triton keeps it in a uint32_t


def unsupported_type_error(name: str, datatype: str) -> InvalidRequestError:
    """Triton's error for classifying an output of a type it cannot rank."""
    return InvalidRequestError(
        f"class result not available for output due to unsupported type '{datatype}' (output '{name}')",
        hint=f"classification needs an output of type {', '.join(SUPPORTED)}; request '{name}' without class_count",
    )


def top_k(rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest values of each row of 2-D ``rows``, in Triton's order.

    Vectorised over the batch; a row is re-ranked by the libstdc++ emulation only when its answer
    depends on ties (an equal value among its first ``k`` places, past 16 columns) or it holds NaN.

    :returns: int64 array of shape ``(rows, min(k, columns))``.
    """
    count, n = rows.shape
    m = min(k, n)
    if m == 0 or count == 0:
        return np.zeros((count, m), dtype=np.int64)
    order = stable_descending(rows)
    best = order[:, :m]
    if n <= THRESHOLD and rows.dtype.kind != "f":
        return best  # up to 16 classes std::sort is an insertion sort: stable, like ours
    ranked = np.take_along_axis(rows, order[:, : min(m + 1, n)], axis=1)
    tied = (ranked[:, :-1] == ranked[:, 1:]).any(axis=1) & (n > THRESHOLD)
    if rows.dtype.kind == "f":
        nan = np.isnan(rows).any(axis=1)
        tied &= ~nan
        for row in np.flatnonzero(nan):
            best[row] = reference_sort_order(rows[row].tolist())[:m]
    for row in np.flatnonzero(tied):
        best[row] = sort_order(rows[row], m)
    return best


def _format_value(value: float | int, is_float: bool) -> str:
    if not is_float:
        return str(value)
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"  # glibc's printf keeps NaN's sign
    return "%f" % value  # noqa: UP031 - std::to_string(float/double) is printf's %f


def classify(
    name: str,
    data: bytes | memoryview,
    datatype: str,
    shape: Sequence[int],
    *,
    k: int,
    batched: bool,
    label_of: LabelOf,
) -> tuple[tuple[int, ...], bytes]:
    """The classification of one output tensor: its new shape and its BYTES contents.

    :param name: the output's name (for errors).
    :param data: the output's raw bytes, C order, little-endian.
    :param datatype: its KServe datatype name.
    :param shape: its shape as Triton reported it.
    :param k: the number of classes asked (>= 0 after Triton's uint32 reading).
    :param batched: the model has a batch dimension (``max_batch_size > 0``).
    :param label_of: the label of a class index; called once per distinct index in the answer.
    :raises InvalidRequestError: ``datatype`` cannot be ranked.
    """
    dtype = SUPPORTED.get(datatype)
    if dtype is None:
        raise unsupported_type_error(name, datatype)
    batch = int(shape[0]) if batched and len(shape) > 0 else 0
    per_item = math.prod(shape[1:] if batch else shape)
    values = np.frombuffer(data, dtype=dtype, count=max(batch, 1) * per_item).reshape(max(batch, 1), per_item)
    best = top_k(values, k)
    chosen = np.take_along_axis(values, best, axis=1).tolist()
    indices = best.tolist()
    labels = {index: label_of(index) for index in set(best.ravel().tolist())}
    is_float = dtype.kind == "f"
    entries: list[bytes] = []
    for row_values, row_indices in zip(chosen, indices, strict=True):
        for value, index in zip(row_values, row_indices, strict=True):
            text = f"{_format_value(value, is_float)}:{index}".encode()
            label = labels[index]
            entries.append(text + b":" + label if label else text)
    m = best.shape[1]
    out_shape = (batch, m) if batch else (m,)
    return out_shape, encode_bytes(np.array(entries, dtype=object))
