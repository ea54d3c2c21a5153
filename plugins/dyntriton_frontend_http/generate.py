"""Triton's generate extension: ``POST …/generate`` (one JSON answer) and ``…/generate_stream`` (server-sent events).

Request: a JSON object whose keys name the model's inputs (a value or a flat array)
or are request parameters; the ``parameters`` object is read the same way; ``id`` is
the request id. An input's shape comes from the model metadata: fixed dimensions
divide the element count, the innermost variable one takes the rest, other variable
ones (e.g. the batch dimension) are 1 — Triton's rule.

Response: ``{"id"?, "model_name", "model_version", <parameter>: value, <output>: value}``,
keys sorted as Triton's writer sorts them; a one-element output is a scalar, others
a flat array. Over SSE each response is ``data: <json>\\n\\n``; an error after the
first response is an event ``data: {"error": ...}``.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2

from dynamo_triton.dtypes import DTypeTable
from dynamo_triton.errors import InvalidRequestError
from dyntriton_frontend_http.infer_request import OutputChoice, RestInferRequest, serialize_request, set_parameter
from dyntriton_frontend_http.infer_response import read_response, response_parameters
from dyntriton_frontend_http.json_codec import data_to_raw, raw_to_data
from dyntriton_frontend_http.responses import dumps

__all__ = ["generate_request", "generate_response", "sse_event"]


def _shape(name: str, dims: list[int], count: int) -> list[int]:
    shape = list(dims)
    remaining = count
    for dim in reversed(shape):
        if dim >= 0:
            if dim == 0 or remaining % dim:
                raise InvalidRequestError(
                    f"The schema can not convert input '{name}' to tensor with proper shape: {count} element(s) "
                    f"do not fill dims {dims}"
                )
            remaining //= dim
    for index in range(len(shape) - 1, -1, -1):
        if shape[index] < 0:
            shape[index], remaining = remaining, 1
    if remaining != 1:
        raise InvalidRequestError(
            f"The schema can not convert input '{name}' to tensor with proper shape: {count} element(s) "
            f"do not fill dims {dims}"
        )
    return shape


def generate_request(
    body: Any, *, model: str, version: str, metadata: service_pb2.ModelMetadataResponse, table: DTypeTable
) -> RestInferRequest:
    """The ``ModelInferRequest`` of a generate request body (already JSON-decoded).

    :raises InvalidRequestError: not an object, a value that does not fit its input, a parameter of
        an unsupported type, or a key used both at the top level and in ``parameters``.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("the generate request must be a JSON object of input names and parameters")
    inputs = {tensor.name: tensor for tensor in metadata.inputs}
    head = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request_id = body.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InvalidRequestError(f"Unable to parse 'id': expected a string, got {request_id!r:.40}")
        head.id = request_id
    members = [(key, value) for key, value in body.items() if key not in ("id", "parameters")]
    nested = body.get("parameters", {})
    if not isinstance(nested, dict):
        raise InvalidRequestError("Expected JSON object for keyword: 'parameters'")
    if "parameters" in inputs:
        raise InvalidRequestError("Keyword 'parameters' for nested schema also given as input tensor name")
    members += list(nested.items())
    tensors: list[bytes] = []
    seen: set[str] = set()
    for key, value in members:
        if key in seen:
            raise InvalidRequestError(f"'{key}' is given twice (at the top level and in 'parameters')")
        seen.add(key)
        spec = inputs.get(key)
        if spec is None:
            if key.startswith("triton_"):
                raise InvalidRequestError(
                    "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
                )
            set_parameter(head.parameters, key, value)
            continue
        count = len(value) if isinstance(value, list) else 1
        shape = _shape(key, list(spec.shape), count)
        head.inputs.add(name=key, datatype=spec.datatype, shape=shape)
        tensors.append(data_to_raw(key, spec.datatype, shape, value, table))
    raw, views = serialize_request(head, tensors)
    return RestInferRequest(head, raw, OutputChoice(), views)


def generate_response(data: bytes, table: DTypeTable) -> dict[str, Any] | None:
    """The generate JSON object of one serialized response; None for an empty final-flag response."""
    header, tensors = read_response(data, table)
    parameters = response_parameters(header)
    if not header.outputs and not parameters and "triton_final_response" in header.parameters:
        return None
    body: dict[str, Any] = {"model_name": header.model_name, "model_version": header.model_version}
    if header.id:
        body["id"] = header.id
    body.update(parameters)
    for output, raw in zip(header.outputs, tensors, strict=True):
        values = raw_to_data(output.name, output.datatype, raw, table)
        body[output.name] = values[0] if len(values) == 1 else values
    return dict(sorted(body.items()))


def sse_event(body: Any) -> bytes:
    """One server-sent event carrying ``body`` as JSON."""
    return b"data: " + dumps(body) + b"\n\n"
