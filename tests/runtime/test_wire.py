"""split_field: tensors found in request bytes without copying them, header parsed by protobuf."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from dynamo_triton.wire import WireError, field_header, split_field

RAW = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number


def _request(contents: list[bytes], *, model: str = "m", request_id: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.parameters["sequence_id"].int64_param = 7
    for index, content in enumerate(contents):
        request.inputs.add(name=f"IN{index}", datatype="UINT8", shape=[len(content)])
        request.outputs.add(name=f"OUT{index}")
    request.raw_input_contents.extend(contents)
    return request


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.text(max_size=20))
def test_split_gives_the_message_without_the_field_and_the_values_in_order(contents, request_id) -> None:
    request = _request(contents, request_id=request_id)
    header, values = split_field(request.SerializeToString(), RAW)
    parsed = service_pb2.ModelInferRequest.FromString(header)
    assert not parsed.raw_input_contents
    expected = service_pb2.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert parsed == expected
    assert [bytes(value) for value in values] == contents


def test_values_are_views_into_the_payload_not_copies() -> None:
    payload = bytearray(_request([b"\x01" * 1024, b"\x02" * 10]).SerializeToString())
    _, values = split_field(payload, RAW)
    assert values[0].obj is payload
    payload[payload.index(b"\x01" * 1024)] = 9  # a write into the payload shows through the view
    assert values[0][0] == 9 and bytes(values[1]) == b"\x02" * 10


def test_fields_in_any_order_and_appended_values() -> None:
    head = _request([]).SerializeToString()
    payload = field_header(RAW, 3) + b"abc" + head + field_header(RAW, 2) + b"de"
    header, values = split_field(payload, RAW)
    assert [bytes(v) for v in values] == [b"abc", b"de"]
    assert service_pb2.ModelInferRequest.FromString(header) == _request([])


@pytest.mark.parametrize(
    "payload",
    [
        field_header(RAW, 10) + b"short",  # a value past the end
        b"\x80",  # a truncated varint
        b"\x0b",  # field 1, wire type 3 (groups are not used by KServe)
        bytes([RAW << 3 | 0, 1]),  # the field with the wrong wire type
    ],
)
def test_malformed_bytes_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        split_field(payload, RAW)


def test_a_large_tensor_is_not_copied() -> None:
    tensor = np.random.default_rng(1).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    payload = _request([tensor]).SerializeToString()
    _, values = split_field(payload, RAW)
    assert values[0].obj is payload  # a view of the received bytes object itself
    assert values[0] == memoryview(tensor)
