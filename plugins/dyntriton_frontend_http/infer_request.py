"""A KServe v2 REST inference body -> the ``ModelInferRequest`` the request pipeline validates and routes.

The body is a JSON object, optionally followed by binary tensor data (Triton's binary
tensor data extension): ``Inference-Header-Content-Length`` gives the JSON's length,
each binary input's ``binary_data_size`` its share of the rest, in input order. With
``Inference-Header-Content-Length: 0`` the whole body is the one input of a
single-input model (a "raw binary request"; shape deduced from the size).

Every input ends up in ``raw_input_contents``: binary inputs as slices of the body,
JSON ``data`` through :mod:`.json_codec`. The serialized request is built once,
protobuf header plus tensors (``raw``), and what the worker receives is those bytes.
HTTP-only choices (``binary_data`` per output, ``binary_data_output``) stay here in
:class:`OutputChoice`; ``classification`` travels to the core on the requested output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.dtypes import DTypeTable
from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.wire import field_header
from dyntriton_frontend_http.json_codec import data_to_raw, row_for

__all__ = ["OutputChoice", "RestInferRequest", "parse_infer_body", "serialize_request", "set_parameter"]

_RAW_INPUT_CONTENTS = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_UINT64_MAX = 2**64 - 1
_INT64_MAX = 2**63 - 1
_SHM_REGION, _SHM_SIZE, _SHM_OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"


@dataclass(frozen=True, slots=True)
class OutputChoice:
    """How each output goes back: JSON ``data`` or binary (after the JSON header).

    :param binary: ``binary_data`` of each output the client named.
    :param default_binary: for outputs not named: ``binary_data_output`` (or true for raw binary requests).
    :param shared: outputs asked into a shared-memory region (answered with neither data nor binary part).
    """

    binary: dict[str, bool] = field(default_factory=dict)
    default_binary: bool = False
    shared: frozenset[str] = frozenset()

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default_binary)


@dataclass(slots=True)
class RestInferRequest:
    """A parsed REST inference request, ready for ``RequestPipeline.prepare(request, raw, raw_inputs=...)``.

    :param request: the KServe message without its tensors.
    :param raw: the serialized request with its tensors: what the worker receives.
    :param outputs: how each output goes back.
    :param raw_inputs: each input's bytes, views into ``raw`` (nothing is parsed or copied twice).
    """

    request: service_pb2.ModelInferRequest
    raw: bytes
    outputs: OutputChoice
    raw_inputs: list[memoryview]


def _bad(message: str, hint: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, hint=hint)


_JSON_KINDS = {str: "a string", list: "an array", dict: "an object", bool: "a boolean"}


def _member(obj: dict[str, Any], key: str, kind: type, what: str, *, required: bool = True) -> Any:
    """``obj[key]`` checked to be of JSON ``kind`` (str, list, dict or bool); None when absent and optional."""
    if key not in obj:
        if required:
            raise _bad(f"{what} has no '{key}'; it is required")
        return None
    value = obj[key]
    if not isinstance(value, kind):
        raise _bad(f"Unable to parse '{key}' of {what}: expected {_JSON_KINDS[kind]}, got {_kind(value)}")
    return value


def _uint(value: Any, what: str, limit: int = _UINT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _bad(f"Unable to parse '{what}': expected an unsigned integer up to {limit}, got {value!r:.60}")
    return value


def set_parameter(parameters: Any, key: str, value: Any) -> None:
    """Store a JSON parameter value in a protobuf ``map<string, InferParameter>`` (bool, int, float or string)."""
    target = parameters[key]
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        if -(2**63) <= value <= _INT64_MAX:
            target.int64_param = value
        elif 0 <= value <= _UINT64_MAX:
            target.uint64_param = value
        else:
            del parameters[key]
            raise _bad(f"parameter '{key}' = {value} does not fit in 64 bits")
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        del parameters[key]
        raise _bad(f"parameter '{key}' has invalid type {type(value).__name__}: expected a boolean, number or string")


def _request_parameters(head: service_pb2.ModelInferRequest, params: dict[str, Any]) -> bool:
    """Copy request ``parameters`` into ``head``; returns ``binary_data_output``."""
    binary_output = False
    for key, value in params.items():
        if key == "binary_data_output":
            binary_output = _member(params, key, bool, "the request parameters")
        elif key == "sequence_id":
            if isinstance(value, str):
                head.parameters[key].string_param = value
            else:
                number = _uint(value, "sequence_id")
                if number > _INT64_MAX:
                    head.parameters[key].uint64_param = number
                else:
                    head.parameters[key].int64_param = number
        elif key in ("sequence_start", "sequence_end"):
            head.parameters[key].bool_param = _member(params, key, bool, "the request parameters")
        elif key == "priority":
            head.parameters[key].uint64_param = _uint(value, key)
        elif key == "timeout":
            head.parameters[key].int64_param = _uint(value, key, _INT64_MAX)
        elif key.startswith("triton_"):
            raise _bad(
                "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
            )
        else:
            set_parameter(head.parameters, key, value)
    return binary_output


def _shared_memory(target: Any, params: dict[str, Any], what: str) -> None:
    """Copy a tensor's region parameters into ``target.parameters`` as gRPC carries them (int64 sizes)."""
    target.parameters[_SHM_REGION].string_param = _member(params, _SHM_REGION, str, f"{what} parameters")
    target.parameters[_SHM_SIZE].int64_param = _uint(params.get(_SHM_SIZE, 0), _SHM_SIZE, _INT64_MAX)
    if _SHM_OFFSET in params:
        target.parameters[_SHM_OFFSET].int64_param = _uint(params[_SHM_OFFSET], _SHM_OFFSET, _INT64_MAX)


def _outputs(head: service_pb2.ModelInferRequest, outputs: list[Any]) -> tuple[dict[str, bool], frozenset[str]]:
    binary: dict[str, bool] = {}
    shared: set[str] = set()
    for index, output in enumerate(outputs):
        if not isinstance(output, dict):
            raise _bad(f"output {index} of the request is not a JSON object")
        name = _member(output, "name", str, f"output {index}")
        params = _member(output, "parameters", dict, f"output '{name}'", required=False) or {}
        requested = head.outputs.add(name=name)
        if _SHM_REGION in params:
            if params.get("binary_data") is True:
                raise _bad("Output can't set both 'shared_memory_region' and 'binary_data'")
            _shared_memory(requested, params, f"output '{name}'")
            shared.add(name)
        if "classification" in params:
            requested.parameters["classification"].int64_param = _uint(params["classification"], "classification")
        if "binary_data" in params:
            binary[name] = _member(params, "binary_data", bool, f"output '{name}' parameters")
    return binary, frozenset(shared)


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in value):
        raise _bad(
            f"Unable to parse 'shape' of input '{name}': expected an array of non-negative integers, got {value}"
        )
    return value


def _input_data(
    entry: Any, index: int, body: memoryview, offset: int, header_given: bool, table: DTypeTable
) -> tuple[tuple[str, str, list[int]], bytes | memoryview | dict[str, Any], int]:
    """One input: ((name, datatype, shape), its raw bytes or its region parameters, the body offset after it)."""
    if not isinstance(entry, dict):
        raise _bad(f"input {index} of the request is not a JSON object")
    name = _member(entry, "name", str, f"input {index}")
    datatype = _member(entry, "datatype", str, f"input '{name}'")
    shape = _shape(_member(entry, "shape", list, f"input '{name}'"), name)
    params = _member(entry, "parameters", dict, f"input '{name}'", required=False) or {}
    sources = [
        s
        for s, present in (
            ("'data'", "data" in entry),
            ("'binary_data_size'", "binary_data_size" in params),
            ("'shared_memory_region'", "shared_memory_region" in params),
        )
        if present
    ]
    if len(sources) != 1:
        got = "no field is set" if not sources else "set " + " ".join(sources)
        raise _bad(
            f"Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            f"'shared_memory_region' in 'parameters'. But {got} (input '{name}')"
        )
    if _SHM_REGION in params:
        return (name, datatype, shape), params, offset
    if "data" in entry:
        return (name, datatype, shape), data_to_raw(name, datatype, shape, entry["data"], table), offset
    size = _uint(params["binary_data_size"], "binary_data_size")
    row_for(datatype, table, f"input '{name}'")
    if offset + size > len(body):
        if not header_given:
            raise _bad(
                f"input '{name}' has binary_data_size {size} but the request has no Inference-Header-Content-Length "
                "header, so the whole body was read as JSON",
                "set Inference-Header-Content-Length to the byte length of the JSON header",
            )
        raise _bad(
            f"unexpected size for input '{name}': binary_data_size is {size} but only {len(body) - offset} byte(s) "
            f"of binary data remain in the body",
            "binary_data_size of each input must equal its bytes after the JSON header, in input order",
        )
    return (name, datatype, shape), body[offset : offset + size], offset + size


def serialize_request(
    head: service_pb2.ModelInferRequest, tensors: list[bytes | memoryview]
) -> tuple[bytes, list[memoryview]]:
    """The request's bytes, built with one copy of each tensor, and each tensor as a view into them.

    The bytes are protobuf's serialization of ``head`` (no tensors), then each tensor as a
    ``raw_input_contents`` field: a valid ``ModelInferRequest`` with the tensors in input order.
    """
    parts: list[bytes | memoryview] = [head.SerializeToString()]
    offsets: list[tuple[int, int]] = []
    position = len(parts[0])
    for data in tensors:
        header = field_header(_RAW_INPUT_CONTENTS, len(data))
        parts += (header, data)
        position += len(header)
        offsets.append((position, position + len(data)))
        position += len(data)
    raw = b"".join(parts)
    view = memoryview(raw)
    return raw, [view[start:end] for start, end in offsets]


def _finish(
    head: service_pb2.ModelInferRequest, tensors: list[bytes | memoryview], outputs: OutputChoice
) -> RestInferRequest:
    raw, views = serialize_request(head, tensors)
    return RestInferRequest(head, raw, outputs, views)


def parse_infer_body(
    body: bytes,
    header_length: int | None,
    *,
    model: str,
    version: str,
    table: DTypeTable,
    config: model_config_pb2.ModelConfig | None = None,
) -> RestInferRequest:
    """Turn an infer request body into a :class:`RestInferRequest` for ``model`` (``version`` may be "").

    :param header_length: ``Inference-Header-Content-Length`` (None when absent: the body is all JSON;
        0: a raw binary request, which needs ``config``).
    :raises InvalidRequestError: malformed JSON, missing or mistyped fields, binary sizes that do not
        add up to the body, JSON data that does not fit its datatype, unsupported shared memory.
    """
    if header_length == 0:
        if config is None:
            raise AssertionError("a raw binary request needs the model config")
        return _raw_binary(body, model, version, config, table)
    view = memoryview(body)
    json_end = len(body) if header_length is None else header_length
    try:
        header = json.loads(view[:json_end].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = "the body" if header_length is None else f"the first {header_length} bytes (the JSON header)"
        raise _bad(
            f"failed to parse the request JSON buffer: {exc} in {where}",
            "send a JSON object; with binary tensors set Inference-Header-Content-Length to its length",
        ) from None
    if not isinstance(header, dict):
        raise _bad(f"the inference request must be a JSON object, got {_kind(header)}")
    head = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request_id = _member(header, "id", str, "the request", required=False)
    if request_id:
        head.id = request_id
    binary_output = _request_parameters(head, _member(header, "parameters", dict, "the request", required=False) or {})
    inputs = _member(header, "inputs", list, "the request")
    tensors: list[bytes | memoryview] = []
    offset = json_end
    for index, entry in enumerate(inputs):
        (name, datatype, shape), data, offset = _input_data(
            entry, index, view, offset, header_length is not None, table
        )
        tensor = head.inputs.add(name=name, datatype=datatype, shape=shape)
        if isinstance(data, dict):  # in a shared-memory region: the request pipeline reads it from there
            _shared_memory(tensor, data, f"input '{name}'")
        else:
            tensors.append(data)
    if offset != len(body):
        raise _bad(
            f"unexpected additional input data for model '{model}': {len(body) - offset} byte(s) after the last "
            "binary input",
            "the body must be the JSON header followed by exactly the binary_data_size bytes of each binary input",
        )
    binary, shared = _outputs(head, _member(header, "outputs", list, "the request", required=False) or [])
    return _finish(head, tensors, OutputChoice(binary, binary_output, shared))


def _kind(value: Any) -> str:
    return {list: "an array", dict: "an object", str: "a string", bool: "a boolean", int: "a number"}.get(
        type(value), "a number" if isinstance(value, float) else "null"
    )


def _raw_binary(
    body: bytes, model: str, version: str, config: model_config_pb2.ModelConfig, table: DTypeTable
) -> RestInferRequest:
    """Inference-Header-Content-Length: 0: the body is the model's only input; its shape comes from its size."""
    if len(config.input) != 1:
        raise _bad(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly 1 input; "
            f"model '{model}' has {len(config.input)}",
            "send a JSON header describing the inputs (binary tensor data extension)",
        )
    spec = config.input[0]
    row = table.by_triton(model_config_pb2.DataType.Name(spec.data_type))
    dims = list(spec.dims)
    if row.itemsize == 0:
        dims = [1]
    else:
        variable = [index for index, dim in enumerate(dims) if dim < 0]
        if len(variable) > 1:
            raise _bad(
                f"a raw binary request cannot deduce the shape of input '{spec.name}' of model '{model}': "
                f"{len(variable)} variable dimensions in {dims} (at most 1 can be deduced)",
                "send a JSON header with the shape",
            )
        fixed = math.prod(dim for dim in dims if dim >= 0) * row.itemsize
        if fixed == 0 or len(body) % fixed:
            raise _bad(
                f"a raw binary body of {len(body)} bytes is not a whole number of {row.kserve} tensors of dims "
                f"{dims} for input '{spec.name}' of model '{model}'"
            )
        if variable:
            dims[variable[0]] = len(body) // fixed
    shape = ([1] if config.max_batch_size > 0 else []) + dims
    head = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    head.inputs.add(name=spec.name, datatype=row.kserve, shape=shape)
    return _finish(head, [body], OutputChoice({}, True))
