"""Validate a KServe ``ModelInferRequest`` against the model's Triton config, before routing.

Messages follow Triton's own wording (``src/infer_request.cc`` in
triton-inference-server/core) so users see what they would see from Triton.
The per-model facts are computed once per (config, table) and cached.

Datatypes are looked up in the dtype table the caller passes (a frontend passes
``Plugins.dtype_table()``, so plugin datatypes are known; the default is the core
table). A tensor of a plugin datatype is accepted for a model input whose Triton
type is the datatype's carrier (``FP8E4M3`` for a ``TYPE_UINT8`` input): the worker
relabels it before the backend sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dynamo_triton.dtypes import DType, DTypeTable, default_table
from dynamo_triton.errors import InvalidRequestError, UnknownNameError
from dynamo_triton.tensors import Raw, count_bytes_elements

__all__ = ["ModelSpec", "spec_for", "validate_request"]


@dataclass(frozen=True)
class InputSpec:
    name: str
    kserve: str
    dims: tuple[int, ...]
    itemsize: int
    optional: bool
    contents_field: str | None


@dataclass(frozen=True)
class ModelSpec:
    """What validation needs to know about one model."""

    name: str
    max_batch_size: int
    inputs: dict[str, InputSpec]
    outputs: frozenset[str]
    required: frozenset[str]


def _dims(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


_SPECS: dict[tuple[int, int], tuple[Any, DTypeTable, ModelSpec]] = {}


def spec_for(config: Any, *, table: DTypeTable | None = None) -> ModelSpec:
    """The ModelSpec of a ``model_config_pb2.ModelConfig``, computed once per config and table object.

    :param table: the dtype table naming the model's input types (default: the core table).
    """
    table = table or default_table()
    key = (id(config), id(table))
    cached = _SPECS.get(key)
    if cached is not None and cached[0] is config and cached[1] is table:
        return cached[2]
    if len(_SPECS) > 1024:
        _SPECS.clear()
    spec = _build_spec(config, table)
    _SPECS[key] = (config, table, spec)
    return spec


def _build_spec(config: Any, table: DTypeTable) -> ModelSpec:
    from tritonclient.grpc import model_config_pb2

    inputs = {}
    for item in config.input:
        row = table.by_triton(model_config_pb2.DataType.Name(item.data_type))
        inputs[item.name] = InputSpec(
            item.name, row.kserve, tuple(item.dims), row.itemsize, item.optional, row.contents_field
        )
    return ModelSpec(
        name=config.name,
        max_batch_size=config.max_batch_size,
        inputs=inputs,
        outputs=frozenset(output.name for output in config.output),
        required=frozenset(name for name, spec in inputs.items() if not spec.optional),
    )


def _names(names: Sequence[str]) -> str:
    return "[" + ",".join(f"'{name}'" for name in names) + "]" if names else "[]"


def _check_input_count(request: Any, spec: ModelSpec, model: str) -> None:
    given = [tensor.name for tensor in request.inputs]
    if len(given) > len(spec.inputs) or not spec.required <= set(given):
        missing = [name for name in spec.inputs if name in spec.required and name not in given]
        if len(spec.required) == len(spec.inputs):
            expected = f"expected {len(spec.inputs)} inputs but got {len(given)} inputs"
        else:
            expected = f"expected number of inputs between {len(spec.required)} and {len(spec.inputs)} "
            expected += f"but got {len(given)} inputs"
        raise InvalidRequestError(
            f"{expected} for model '{model}'. Got input(s) {_names(given)}, but missing required input(s) "
            f"{_names(missing)}. Please provide all required input(s)."
        )


def _datatype(tensor: Any, table: DTypeTable) -> DType:
    try:
        return table.by_kserve(tensor.datatype)
    except UnknownNameError as exc:
        raise InvalidRequestError(
            f"inference input '{tensor.name}': {exc.message}",
            hint="a datatype from a plugin needs that plugin loaded in the frontend and every worker "
            "(install its distribution, or name its module in DYNTRITON_PLUGINS)",
        ) from None


def validate_request(
    request: Any, config: Any, *, table: DTypeTable | None = None, raw_inputs: Sequence[Raw] | None = None
) -> None:
    """Raise InvalidRequestError (INVALID_ARGUMENT) if ``request`` cannot run on the model.

    Checks input names and count, datatypes, shapes (``-1`` dims, the batch
    dimension when ``max_batch_size > 0``), data sizes (raw or typed, BYTES
    elements counted), and requested outputs.

    :param table: the dtype table requests are read with (default: the core table). A tensor's
        datatype must be in it, and equal the model input's or be carried by it.
    :param raw_inputs: the tensors' raw bytes when they were taken out of the request
        (:func:`dynamo_triton.wire.split_field`); default ``request.raw_input_contents``.
    """
    table = table or default_table()
    spec = spec_for(config, table=table)
    model = request.model_name
    seen: set[str] = set()
    for tensor in request.inputs:
        if tensor.name not in spec.inputs:
            raise InvalidRequestError(f"unexpected inference input '{tensor.name}' for model '{model}'")
        if tensor.name in seen:
            raise InvalidRequestError(f"input '{tensor.name}' is given more than once for model '{model}'")
        seen.add(tensor.name)
    _check_input_count(request, spec, model)
    raw = request.raw_input_contents if raw_inputs is None else raw_inputs
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"expected {len(request.inputs)} raw input contents (one per input, in order) for model '{model}', "
            f"got {len(raw)}"
        )
    batch_size = 0
    for index, tensor in enumerate(request.inputs):
        expected = spec.inputs[tensor.name]
        row = _datatype(tensor, table)
        if row.kserve != expected.kserve and row.carrier != expected.kserve:
            raise InvalidRequestError(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{model}' expects '{expected.kserve}'"
            )
        shape = list(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise InvalidRequestError(
                f"All input dimensions should be specified for input '{tensor.name}' for model '{model}', "
                f"got {_dims(shape)}"
            )
        body = shape
        if spec.max_batch_size > 0:
            if not shape:
                raise InvalidRequestError(
                    f"input '{tensor.name}' has no shape but model requires batch dimension for '{model}'"
                )
            if batch_size == 0:
                batch_size = shape[0]
            elif shape[0] != batch_size:
                raise InvalidRequestError(f"input '{tensor.name}' batch size does not match other inputs for '{model}'")
            body = shape[1:]
        if len(body) != len(expected.dims) or any(
            want != -1 and want != got for want, got in zip(expected.dims, body, strict=False)
        ):
            full = ([-1] if spec.max_batch_size > 0 else []) + list(expected.dims)
            note = (
                " NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
                "to be prepended to each input shape."
                if spec.max_batch_size > 0
                else ""
            )
            raise InvalidRequestError(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. "
                f"Expected {_dims(full)}, got {_dims(shape)}.{note}"
            )
        count = 1
        for dim in shape:
            count *= dim
        _check_size(tensor, row, raw[index] if raw else None, count, model)
    if batch_size > spec.max_batch_size > 0:
        raise InvalidRequestError(f"inference request batch-size must be <= {spec.max_batch_size} for '{model}'")
    for output in request.outputs:
        if output.name not in spec.outputs:
            raise InvalidRequestError(f"unexpected inference output '{output.name}' for model '{model}'")


def _check_size(tensor: Any, expected: DType, raw: Raw | None, count: int, model: str) -> None:
    """Sizes per the request's own datatype row (a carried row has its carrier's itemsize)."""
    if raw is None:
        field = expected.contents_field
        if field is None:
            raise InvalidRequestError(
                f"input '{tensor.name}' for model '{model}' is {expected.kserve}, which has no typed contents "
                "field: send it in raw_input_contents"
            )
        got = len(getattr(tensor.contents, field))
        if got != count:
            raise InvalidRequestError(
                f"unexpected number of {expected.kserve} elements for inference input '{tensor.name}' for model "
                f"'{model}', expecting {count}, got {got}"
            )
        return
    if expected.itemsize == 0:
        elements = count_bytes_elements(raw)
        if elements != count:
            raise InvalidRequestError(
                f"unexpected number of string elements {elements} for inference input '{tensor.name}' for model "
                f"'{model}', expecting {count}"
            )
        return
    if len(raw) != count * expected.itemsize:
        raise InvalidRequestError(
            f"input byte size mismatch for input '{tensor.name}' for model '{model}'. "
            f"Expected {count * expected.itemsize}, got {len(raw)}"
        )
