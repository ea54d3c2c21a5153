"""A worker's serialized ``ModelInferResponse`` -> the KServe v2 REST response body.

Only the protobuf header is parsed; each output tensor is a ``memoryview`` of the
worker's bytes (:func:`dynamo_triton.wire.split_field`). Binary outputs are written back after the JSON
header untouched (binary tensor data extension); JSON outputs become ``data`` through
:mod:`.json_codec`. Field order and compact separators follow Triton's writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import service_pb2

from dynamo_triton.dtypes import DTypeTable
from dynamo_triton.errors import DyntritonError
from dynamo_triton.tensors import contents_to_raw
from dynamo_triton.wire import WireError, split_field
from dyntriton_frontend_http.infer_request import OutputChoice
from dyntriton_frontend_http.json_codec import raw_to_data
from dyntriton_frontend_http.responses import dumps

__all__ = ["RestInferResponse", "parameter_value", "read_response", "render_infer_response"]

_RAW_OUTPUT_CONTENTS = service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number
#: Response parameters that are protocol plumbing, not the model's (gRPC streaming's final flag).
_HIDDEN_PARAMETERS = frozenset({"triton_final_response"})


@dataclass(slots=True)
class RestInferResponse:
    """The JSON header and the binary parts that follow it (empty when every output is JSON)."""

    header: bytes
    binary: list[memoryview | bytes]


def parameter_value(parameter: service_pb2.InferParameter) -> Any:
    """The Python value of an ``InferParameter`` (None when unset)."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def read_response(data: bytes, table: DTypeTable) -> tuple[service_pb2.ModelInferResponse, list[memoryview | bytes]]:
    """Parse a serialized response's header; its output tensors as raw bytes, one per output (views of ``data``)."""
    try:
        header_bytes, raws = split_field(data, _RAW_OUTPUT_CONTENTS)
    except WireError as exc:
        raise DyntritonError(f"a worker sent a malformed ModelInferResponse: {exc}") from exc
    header = service_pb2.ModelInferResponse.FromString(header_bytes)
    tensors: list[memoryview | bytes] = list(raws)
    if not tensors and header.outputs:  # a backend that answered with typed contents
        tensors = [contents_to_raw(output.contents, output.datatype, table=table) for output in header.outputs]
    if len(tensors) != len(header.outputs):
        raise DyntritonError(
            f"model '{header.model_name}' answered {len(header.outputs)} outputs with {len(tensors)} raw contents"
        )
    return header, tensors


def response_parameters(header: service_pb2.ModelInferResponse) -> dict[str, Any]:
    """The response's own parameters as JSON values (protocol plumbing left out)."""
    return {key: parameter_value(value) for key, value in header.parameters.items() if key not in _HIDDEN_PARAMETERS}


def render_infer_response(data: bytes, outputs: OutputChoice, table: DTypeTable) -> RestInferResponse:
    """The REST body of one serialized response: JSON header, then binary outputs in output order.

    :raises InvalidRequestError: a JSON output holds BYTES that are not UTF-8 (hint: ask for binary).
    """
    header, tensors = read_response(data, table)
    body: dict[str, Any] = {}
    if header.id:
        body["id"] = header.id
    body["model_name"] = header.model_name
    body["model_version"] = header.model_version
    parameters = response_parameters(header)
    if parameters:
        body["parameters"] = parameters
    rendered = []
    binary: list[memoryview | bytes] = []
    for output, raw in zip(header.outputs, tensors, strict=True):
        item: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if output.parameters:
            item["parameters"] = {key: parameter_value(value) for key, value in output.parameters.items()}
        if output.name in outputs.shared:  # written into its region: Triton sends only the metadata
            pass
        elif outputs.is_binary(output.name):
            item.setdefault("parameters", {})["binary_data_size"] = len(raw)
            if len(raw):
                binary.append(raw)
        else:
            item["data"] = raw_to_data(output.name, output.datatype, raw, table)
        rendered.append(item)
    body["outputs"] = rendered
    return RestInferResponse(dumps(body), binary)
