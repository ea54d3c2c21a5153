"""Requests that name shared-memory regions: inputs read from them, outputs written into them.

A request's tensors may carry Triton's parameters ``shared_memory_region`` (string),
``shared_memory_byte_size`` (int64, required with it) and ``shared_memory_offset`` (int64,
default 0). :func:`references` reads them (Triton's messages for a missing or mistyped
one); :func:`resolve` turns the request into an ordinary one for the worker: each input
in a region gets its bytes from the region as ``raw_input_contents`` (the other inputs
take the request's raw contents in order, as Triton assigns them), and the outputs asked
into a region are asked for normally. :meth:`OutputPlan.apply` then writes those outputs
into their regions and leaves their metadata in the response with empty raw contents,
which is Triton's answer (REST: no ``data``, no binary part, for them).

**By reference** (``local=True``: every worker of the model runs on this host, see
``RoutingService.on_host``): no tensor byte is copied. Each tensor in a region gets the
parameters :data:`LOCAL_KEY`, :data:`LOCAL_OFFSET` (from the start of the object) and
:data:`LOCAL_SIZE`, each such input an empty ``raw_input_contents`` entry, and the request
:data:`LOCAL_HOST`, this host's identity. The worker maps the objects itself: Triton reads
the inputs from them and writes the outputs into them; it refuses a request whose host is
not its own. An output the worker answered in the body anyway is still written by
:meth:`OutputPlan.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dynamo_triton.errors import DyntritonError, InvalidRequestError
from dynamo_triton.tensors import contents_to_raw
from dynamo_triton.wire import WireError, field_header, split_field

if TYPE_CHECKING:
    from tritonclient.grpc import service_pb2

    from dynamo_triton.dtypes import DTypeTable
    from dynamo_triton.runtime.shared_memory import MappedRegion, SharedMemoryRegistry

__all__ = [
    "LOCAL_HOST",
    "LOCAL_KEY",
    "LOCAL_OFFSET",
    "LOCAL_SIZE",
    "REGION",
    "OutputPlan",
    "Reference",
    "references",
    "resolve",
]

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
_PARAMETERS = (REGION, BYTE_SIZE, OFFSET)
#: The by-reference parameters a frontend hands a worker of its host (tensor: key, offset, size; request: host).
LOCAL_KEY = "dyntriton_shm_key"
LOCAL_OFFSET = "dyntriton_shm_offset"
LOCAL_SIZE = "dyntriton_shm_byte_size"
LOCAL_HOST = "dyntriton_shm_host"


@dataclass(frozen=True, slots=True)
class Reference:
    """Where one tensor's bytes are: ``byte_size`` bytes at ``offset`` of region ``region``."""

    region: str
    offset: int
    byte_size: int


def _reference(tensor: Any) -> Reference | None:
    parameters = tensor.parameters
    if REGION not in parameters:
        return None
    name = tensor.name
    region = parameters[REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise InvalidRequestError(
            f"invalid value type for '{REGION}' parameter for tensor '{name}', expected string_param."
        )
    if BYTE_SIZE not in parameters:
        raise InvalidRequestError(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{name}'"
        )
    values = []
    for key in (BYTE_SIZE, OFFSET):
        if key not in parameters:
            values.append(0)
            continue
        value = parameters[key]
        if value.WhichOneof("parameter_choice") != "int64_param":
            raise InvalidRequestError(
                f"invalid value type for '{key}' parameter for tensor '{name}', expected int64_param."
            )
        values.append(value.int64_param)
    return Reference(region.string_param, values[1], values[0])


@dataclass(slots=True)
class SharedTensors:
    """The region references of one request, read by :func:`references`."""

    inputs: dict[int, Reference] = field(default_factory=dict)
    outputs: dict[str, Reference] = field(default_factory=dict)


def references(request: service_pb2.ModelInferRequest) -> SharedTensors | None:
    """The request's region references, or None when it names no region (the usual case, cheap).

    :raises InvalidRequestError: a region parameter missing or of the wrong type (Triton's words), an
        output asking for both a region and ``classification``.
    """
    found: SharedTensors | None = None
    for index, tensor in enumerate(request.inputs):
        if tensor.parameters and REGION in tensor.parameters:
            found = found or SharedTensors()
            found.inputs[index] = _reference(tensor)  # type: ignore[assignment]
    for output in request.outputs:
        if output.parameters and REGION in output.parameters:
            if "classification" in output.parameters:
                raise InvalidRequestError("output can't set both 'shared_memory_region' and 'classification'")
            found = found or SharedTensors()
            found.outputs[output.name] = _reference(output)  # type: ignore[assignment]
    return found


@dataclass(slots=True)
class OutputPlan:
    """The outputs a request asked into regions, mapped: :meth:`apply` writes them there."""

    outputs: dict[str, tuple[MappedRegion, Reference]]
    in_place: bool = False

    def apply(self, response: bytes) -> bytes:
        """``response`` (a serialized ``ModelInferResponse``) with the planned outputs written into their
        regions and their raw contents emptied.

        :raises DyntritonError: INTERNAL, Triton's message, when a region is too small for its output.
        """
        if not self.outputs:
            return response
        from tritonclient.grpc import service_pb2

        raw_output_contents = service_pb2.ModelInferResponse.RAW_OUTPUT_CONTENTS_FIELD_NUMBER
        try:
            header_bytes, raws = split_field(response, raw_output_contents)
        except WireError as exc:
            raise DyntritonError(f"a worker sent a malformed ModelInferResponse: {exc}") from exc
        header = service_pb2.ModelInferResponse.FromString(header_bytes)
        if len(raws) != len(header.outputs):
            raise DyntritonError(
                f"model '{header.model_name}' answered {len(header.outputs)} outputs with {len(raws)} raw contents; "
                "outputs asked into shared memory need raw contents"
            )
        parts: list[bytes | memoryview] = [header_bytes]
        for output, raw in zip(header.outputs, raws, strict=True):
            planned = self.outputs.get(output.name)
            if planned is not None:
                mapped, reference = planned
                if not len(raw) and self.in_place:
                    parts += (field_header(raw_output_contents, 0), raw)
                    continue  # the worker wrote it into the region
                if len(raw) > reference.byte_size:
                    raise DyntritonError(
                        f"shared memory size specified with the request for output '{output.name}' "
                        f"({reference.byte_size} bytes) should be at least {len(raw)} bytes to hold the results"
                    )
                mapped.write(reference.offset, raw)
                raw = memoryview(b"")
            parts += (field_header(raw_output_contents, len(raw)), raw)
        return b"".join(parts)


async def resolve(
    request: service_pb2.ModelInferRequest,
    raw_inputs: list[memoryview] | None,
    shared: SharedTensors,
    registry: SharedMemoryRegistry | None,
    table: DTypeTable,
    *,
    local: bool = False,
) -> tuple[service_pb2.ModelInferRequest, bytes, list[Any], OutputPlan]:
    """The request the worker gets (every input in ``raw_input_contents``, no region parameters), its bytes,
    its inputs as validation reads them (views into the bytes), and the plan for the outputs.

    :param raw_inputs: the request's raw contents when they were taken out of it (else read from it).
    :param local: hand the regions to the worker by reference (see the module's docstring); the
        returned inputs then stand in for the region inputs (their length; BYTES: a copy).
    :raises DyntritonError: UNIMPLEMENTED without a registry; NOT_FOUND for an unknown region; INVALID_ARGUMENT
        for an offset or size outside its region, or an input without data (Triton's messages).
    """
    from tritonclient.grpc import service_pb2

    if registry is None:
        raise DyntritonError(
            "system shared memory is not available on this frontend (it has no region registry)",
            status="UNIMPLEMENTED",
        )
    raws: list[Any] = list(request.raw_input_contents) if raw_inputs is None else raw_inputs
    head = service_pb2.ModelInferRequest()
    head.CopyFrom(request)
    del head.raw_input_contents[:]
    tensors: list[bytes | memoryview] = []
    checked: dict[int, Any] = {}  # by reference: what validation reads of each region input
    next_raw = 0
    for index, tensor in enumerate(head.inputs):
        reference = shared.inputs.get(index)
        if reference is not None:
            mapped = registry.cached(reference.region) or await registry.region(reference.region)
            for key in _PARAMETERS:
                tensor.parameters.pop(key, None)
            if local:
                checked[index] = _for_validation(mapped, reference, tensor.datatype)
                _by_reference(tensor, mapped, reference)
                tensors.append(b"")
            else:
                tensors.append(mapped.read(reference.offset, reference.byte_size))
        elif raws:
            if next_raw >= len(raws):
                raise InvalidRequestError(
                    f"unable to find data for input tensor '{tensor.name}' for model '{request.model_name}' in request."
                )
            tensors.append(raws[next_raw])
            next_raw += 1
        elif tensor.HasField("contents"):
            tensors.append(contents_to_raw(tensor.contents, tensor.datatype, table=table))
            tensor.ClearField("contents")
        else:
            raise InvalidRequestError(
                f"unable to find data for input tensor '{tensor.name}' for model '{request.model_name}' in request."
            )
    outputs: dict[str, tuple[MappedRegion, Reference]] = {}
    for output in head.outputs:
        reference = shared.outputs.get(output.name)
        if reference is None:
            continue
        mapped = registry.cached(reference.region) or await registry.region(reference.region)
        mapped.check(reference.offset, reference.byte_size)
        outputs[output.name] = (mapped, reference)
        for key in _PARAMETERS:
            output.parameters.pop(key, None)
        if local:
            _by_reference(output, mapped, reference)
    if local:
        head.parameters[LOCAL_HOST].string_param = registry.host
    raw, views = _serialize(head, tensors)
    checks: list[Any] = list(views)
    for index, data in checked.items():
        checks[index] = data
    return head, raw, checks, OutputPlan(outputs, in_place=local)


def _by_reference(tensor: Any, mapped: MappedRegion, reference: Reference) -> None:
    mapped.check(reference.offset, reference.byte_size)
    tensor.parameters[LOCAL_KEY].string_param = mapped.region.key
    tensor.parameters[LOCAL_OFFSET].int64_param = mapped.region.offset + reference.offset
    tensor.parameters[LOCAL_SIZE].int64_param = reference.byte_size


class _Length:
    """Stands in for a fixed-size tensor's bytes in validation, which only takes its length."""

    __slots__ = ("size",)

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def _for_validation(mapped: MappedRegion, reference: Reference, datatype: str) -> Any:
    """What validation needs of a region input handed over by reference: its length (BYTES: its bytes)."""
    mapped.check(reference.offset, reference.byte_size)
    if datatype == "BYTES":
        return mapped.read(reference.offset, reference.byte_size)
    return _Length(reference.byte_size)


def _serialize(
    head: service_pb2.ModelInferRequest, tensors: list[bytes | memoryview]
) -> tuple[bytes, list[memoryview]]:
    parts: list[bytes | memoryview] = [head.SerializeToString()]
    raw_input_contents = head.RAW_INPUT_CONTENTS_FIELD_NUMBER
    spans = []
    position = len(parts[0])
    for data in tensors:
        header = field_header(raw_input_contents, len(data))
        parts += (header, data)
        position += len(header)
        spans.append((position, position + len(data)))
        position += len(data)
    raw = b"".join(parts)
    view = memoryview(raw)
    return raw, [view[start:end] for start, end in spans]
