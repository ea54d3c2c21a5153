"""REST codecs as specifications: JSON tensors, the binary extension, compression, generate, protos as JSON."""

from __future__ import annotations

import gzip
import json
import re
import zlib

import ml_dtypes
import numpy as np
import pytest
from dyntriton_frontend_http.compression import (
    BodyTooLargeError,
    UnsupportedEncodingError,
    decompress,
    response_encoding,
)
from dyntriton_frontend_http.generate import generate_request, generate_response, sse_event
from dyntriton_frontend_http.infer_request import OutputChoice, parse_infer_body
from dyntriton_frontend_http.infer_response import render_infer_response
from dyntriton_frontend_http.json_codec import data_to_raw, raw_to_data
from dyntriton_frontend_http.responses import message_to_json
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.dtypes import default_table
from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.tensors import encode_bytes

TABLE = default_table()
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


# -- JSON tensors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", [*NUMERIC, "BF16"])
def test_rest_json_every_numeric_dtype_round_trips_exactly(datatype):
    dtype = TABLE.by_kserve(datatype).numpy
    if datatype == "BOOL":
        values = np.array([True, False, True], dtype)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.array([info.min, 0, info.max], dtype)
    else:
        values = np.array([-1.5, 0.1, 3.0], dtype)
    data = raw_to_data("T", datatype, values.tobytes(), TABLE)
    raw = data_to_raw("T", datatype, [3], json.loads(json.dumps(data)), TABLE)
    assert raw == values.tobytes()


@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=3, max_side=4)))
def test_rest_json_int64_nested_data_is_read_in_row_major_order(values):
    raw = data_to_raw("T", "INT64", list(values.shape), values.tolist(), TABLE)
    assert raw == values.tobytes()


@given(st.lists(st.text(max_size=8), max_size=6))
def test_rest_json_bytes_are_utf8_strings_both_ways(strings):
    raw = data_to_raw("T", "BYTES", [len(strings)], strings, TABLE)
    assert raw == encode_bytes(np.array([s.encode() for s in strings] or [], dtype=object))
    assert raw_to_data("T", "BYTES", raw, TABLE) == strings


def test_rest_json_ragged_nesting_is_read_in_order_as_triton_does():
    assert data_to_raw("T", "INT32", [1, 3], [[1, 2], [3]], TABLE) == np.array([1, 2, 3], np.int32).tobytes()
    assert raw_to_data("T", "BYTES", data_to_raw("T", "BYTES", [3], [["a"], ["b", "c"]], TABLE), TABLE) == list("abc")


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1, 2, 99999999999], "value 99999999999 is out of range for INT32"),
        ("UINT8", [-1, 0, 1], "value -1 is out of range for UINT8"),
        ("INT32", [1, 2, 3.5], "INT32 data holds non-integer numbers"),
        ("INT32", [True, False, True], "INT32 data holds booleans"),
        ("INT64", [1, 2, 2**70], "value 1180591620717411303424 is out of range for INT64"),
        ("UINT64", [1, 2.5, 2**64 - 1], "UINT64 data holds non-integer numbers"),
        ("FP16", [1.0, 1e6, 2.0], "value 1000000.0 overflows FP16"),
        ("BF16", [1.0, 1e300, 2.0], "overflows BF16"),
        ("FP32", ["a", "b", "c"], "FP32 data must be JSON numbers"),
        ("BOOL", [1, 0, 1], "BOOL data must be JSON true/false"),
        ("BYTES", ["a", 1, "c"], "BYTES element 1 is a JSON number; expected a string"),
        ("INT32", [1, 2], "shape [3] holds 3 element(s) but 'data' has 2"),
        ("NOPE", [1, 2, 3], "input 'T': unknown"),
    ],
)
def test_rest_json_never_converts_silently(datatype, data, message):
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        data_to_raw("T", datatype, [3], data, TABLE)


def test_rest_json_output_bytes_that_are_not_utf8_say_to_ask_for_binary():
    with pytest.raises(InvalidRequestError, match="not UTF-8") as caught:
        raw_to_data("OUT", "BYTES", encode_bytes(np.array([b"\xff"], dtype=object)), TABLE)
    assert "binary_data" in str(caught.value)


# -- infer request --------------------------------------------------------------------------------
def _body(header: dict, *tensors: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(tensors), len(head)


def test_rest_request_binary_and_json_inputs_become_raw_contents_in_order():
    uint32 = np.arange(4, dtype=np.uint32)
    header = {
        "id": "r1",
        "inputs": [
            {"name": "A", "shape": [2, 2], "datatype": "UINT32", "parameters": {"binary_data_size": 16}},
            {"name": "B", "shape": [2], "datatype": "FP32", "data": [0.5, 1.5]},
            {"name": "C", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
        ],
        "outputs": [{"name": "X", "parameters": {"binary_data": True, "classification": 2}}, {"name": "Y"}],
        "parameters": {"sequence_id": "s", "sequence_start": True, "priority": 2, "custom": 1.5},
    }
    body, length = _body(header, uint32.tobytes(), b"\x01\x00\x01")
    rest = parse_infer_body(body, length, model="m", version="1", table=TABLE)
    request = rest.request
    assert (request.model_name, request.model_version, request.id) == ("m", "1", "r1")
    assert [list(t.shape) for t in request.inputs] == [[2, 2], [2], [3]]
    expected = [
        uint32.tobytes(),
        np.array([0.5, 1.5], np.float32).tobytes(),
        b"\x01\x00\x01",
    ]
    assert [bytes(view) for view in rest.raw_inputs] == expected
    assert not request.raw_input_contents  # the tensors are views into rest.raw, not copies in the message
    parsed = service_pb2.ModelInferRequest.FromString(rest.raw)
    assert list(parsed.raw_input_contents) == expected
    parsed.ClearField("raw_input_contents")
    assert parsed == request
    assert request.parameters["sequence_id"].string_param == "s"
    assert request.parameters["sequence_start"].bool_param is True
    assert request.parameters["priority"].uint64_param == 2
    assert request.parameters["custom"].double_param == 1.5
    assert request.outputs[0].parameters["classification"].int64_param == 2
    assert "binary_data" not in request.outputs[0].parameters
    assert rest.outputs.is_binary("X") and not rest.outputs.is_binary("Y") and not rest.outputs.is_binary("Z")


@pytest.mark.parametrize(
    ("header", "tensors", "length", "message"),
    [
        (
            {"inputs": [{"name": "A", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 8}}]},
            [b"1234"],
            True,
            "binary_data_size is 8 but only 4 byte",
        ),
        (
            {"inputs": [{"name": "A", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}]},
            [b"123456"],
            True,
            "2 byte\\(s\\) after the last binary input",
        ),
        (
            {"inputs": [{"name": "A", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}]},
            [],
            False,
            "no Inference-Header-Content-Length header",
        ),
        ({"inputs": [{"name": "A", "shape": [1], "datatype": "INT32"}]}, [], True, "But no field is set"),
        (
            {
                "inputs": [
                    {"name": "A", "shape": [1], "datatype": "INT32", "data": [1], "parameters": {"binary_data_size": 4}}
                ]
            },
            [b"1234"],
            True,
            "But set 'data' 'binary_data_size'",
        ),
        (
            {"inputs": [{"name": "A", "shape": [1], "datatype": "INT32", "parameters": {"shared_memory_region": 3}}]},
            [],
            True,
            "Unable to parse 'shared_memory_region'",
        ),
        (
            {"inputs": [{"name": "A", "shape": [-1], "datatype": "INT32", "data": [1]}]},
            [],
            True,
            "expected an array of non-negative integers",
        ),
        ({"inputs": {"name": "A"}}, [], True, "Unable to parse 'inputs' of the request: expected an array"),
        ({}, [], True, "the request has no 'inputs'"),
        ({"inputs": [], "parameters": {"triton_x": 1}}, [], True, "reserved for Triton usage"),
        ({"inputs": [], "parameters": {"sequence_id": -1}}, [], True, "Unable to parse 'sequence_id'"),
        ({"inputs": [], "parameters": {"sequence_start": 1}}, [], True, "expected a boolean"),
        ({"inputs": [], "parameters": {"x": [1]}}, [], True, "parameter 'x' has invalid type"),
        (
            {"inputs": [], "outputs": [{"name": "X", "parameters": {"binary_data": "yes"}}]},
            [],
            True,
            "expected a boolean",
        ),
        ({"inputs": [], "id": 5}, [], True, "Unable to parse 'id' of the request: expected a string"),
    ],
)
def test_rest_request_malformed_bodies_say_what_was_wrong(header, tensors, length, message):
    body, header_length = _body(header, *tensors)
    with pytest.raises(InvalidRequestError, match=message):
        parse_infer_body(body, header_length if length else None, model="m", version="", table=TABLE)


def test_rest_request_bad_json_names_the_part_read_as_json():
    with pytest.raises(InvalidRequestError, match="the first 3 bytes"):
        parse_infer_body(b'{"inputs": []}', 3, model="m", version="", table=TABLE)


def _config(dims: list[int], max_batch_size: int = 0, data_type: int = model_config_pb2.TYPE_FP32):
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=max_batch_size)
    config.input.add(name="IN", data_type=data_type, dims=dims)
    return config


def test_rest_raw_binary_request_deduces_the_shape_and_asks_binary_outputs():
    body = np.zeros(12, np.float32).tobytes()
    rest = parse_infer_body(body, 0, model="m", version="", table=TABLE, config=_config([-1, 3], max_batch_size=4))
    assert list(rest.request.inputs[0].shape) == [1, 4, 3]
    assert bytes(rest.raw_inputs[0]) == body
    assert rest.outputs.is_binary("anything")
    strings = parse_infer_body(
        b"\x01\x00\x00\x00a",
        0,
        model="m",
        version="",
        table=TABLE,
        config=_config([1], data_type=model_config_pb2.TYPE_STRING),
    )
    assert list(strings.request.inputs[0].shape) == [1]


@pytest.mark.parametrize(
    ("dims", "size", "message"),
    [([-1, -1], 8, "2 variable dimensions"), ([3], 8, "not a whole number of FP32 tensors")],
)
def test_rest_raw_binary_request_refuses_what_it_cannot_deduce(dims, size, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_infer_body(b"\x00" * size, 0, model="m", version="", table=TABLE, config=_config(dims))


# -- infer response -------------------------------------------------------------------------------
def _response(*outputs: tuple[str, str, list[int], bytes]) -> bytes:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="r1")
    response.parameters["triton_final_response"].bool_param = True
    response.parameters["note"].string_param = "n"
    for name, datatype, shape, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    return response.SerializeToString()


def test_rest_response_binary_outputs_follow_the_json_header_untouched():
    big = np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes()
    data = _response(("A", "UINT8", [4096], big), ("B", "INT32", [2], np.array([7, -8], np.int32).tobytes()))
    rendered = render_infer_response(data, OutputChoice({"A": True}, False), TABLE)
    header = json.loads(rendered.header)
    assert header == {
        "id": "r1",
        "model_name": "m",
        "model_version": "1",
        "parameters": {"note": "n"},
        "outputs": [
            {"name": "A", "datatype": "UINT8", "shape": [4096], "parameters": {"binary_data_size": 4096}},
            {"name": "B", "datatype": "INT32", "shape": [2], "data": [7, -8]},
        ],
    }
    assert [bytes(part) for part in rendered.binary] == [big]
    assert isinstance(rendered.binary[0], memoryview)  # a view of the worker's bytes, not a copy


def test_rest_response_fp16_and_bf16_are_json_numbers():
    fp16 = np.array([1.5, 0.1], np.float16)
    bf16 = np.array([1.5, 0.1], ml_dtypes.bfloat16)
    data = _response(("H", "FP16", [2], fp16.tobytes()), ("B", "BF16", [2], bf16.tobytes()))
    outputs = json.loads(render_infer_response(data, OutputChoice(), TABLE).header)["outputs"]
    assert outputs[0]["data"] == fp16.astype(np.float32).tolist()
    assert outputs[1]["data"] == bf16.astype(np.float32).tolist()


# -- compression ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "identity"),
        ("gzip", "gzip"),
        ("deflate, gzip", "deflate"),
        ("gzip;q=0.5, deflate;q=0.8", "deflate"),
        ("br", "identity"),
        ("gzip;q=bad, deflate", "deflate"),
        ("identity;q=1, gzip;q=0.9", "identity"),
    ],
)
def test_rest_response_encoding_is_chosen_as_triton_chooses(accept, chosen):
    assert response_encoding(accept) == chosen


async def test_rest_request_bodies_inflate_within_the_limit():
    body = b"x" * 1000
    assert await decompress(gzip.compress(body), "gzip", 1000) == body
    assert await decompress(zlib.compress(body), "deflate", 1000) == body
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert await decompress(raw_deflate.compress(body) + raw_deflate.flush(), "deflate", 1000) == body
    with pytest.raises(BodyTooLargeError, match="exceeds the maximum allowed input size of 999 bytes"):
        await decompress(gzip.compress(body), "gzip", 999)
    with pytest.raises(InvalidRequestError, match="cannot be decompressed"):
        await decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(InvalidRequestError, match="truncated"):
        await decompress(gzip.compress(body)[:-12], "gzip", 1000)
    with pytest.raises(UnsupportedEncodingError, match="'br'"):
        await decompress(body, "br", 1000)


# -- generate -------------------------------------------------------------------------------------
def _metadata() -> service_pb2.ModelMetadataResponse:
    metadata = service_pb2.ModelMetadataResponse(name="m")
    metadata.inputs.add(name="IN", datatype="INT32", shape=[-1, -1])
    metadata.inputs.add(name="PAIR", datatype="FP32", shape=[-1, 2])
    metadata.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    return metadata


def test_rest_generate_maps_keys_to_inputs_and_parameters():
    body = {"id": "g", "IN": [1, 2, 3], "PAIR": [1, 2, 3, 4], "TEXT": "hi", "parameters": {"temperature": 0.5}}
    request = generate_request(body, model="m", version="", metadata=_metadata(), table=TABLE).request
    assert request.id == "g"
    assert [list(t.shape) for t in request.inputs] == [[1, 3], [2, 2], [1]]
    assert request.parameters["temperature"].double_param == 0.5
    with pytest.raises(InvalidRequestError, match="can not convert input 'PAIR'"):
        generate_request({"PAIR": [1, 2, 3]}, model="m", version="", metadata=_metadata(), table=TABLE)


def test_rest_generate_response_has_scalars_for_one_element_and_sorted_keys():
    data = _response(("OUT", "INT32", [1], np.array([4], np.int32).tobytes()), ("ALL", "FP32", [2], bytes(8)))
    assert generate_response(data, TABLE) == {
        "ALL": [0.0, 0.0],
        "OUT": 4,
        "id": "r1",
        "model_name": "m",
        "model_version": "1",
        "note": "n",
    }
    final_only = service_pb2.ModelInferResponse(model_name="m")
    final_only.parameters["triton_final_response"].bool_param = True
    assert generate_response(final_only.SerializeToString(), TABLE) is None
    assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'


# -- protobuf as Triton's JSON --------------------------------------------------------------------
def test_rest_protobuf_json_prints_64_bit_integers_as_numbers():
    metadata = service_pb2.ModelMetadataResponse(name="m", versions=["1"])
    metadata.inputs.add(name="IN", datatype="INT32", shape=[-1, 16])
    assert message_to_json(metadata)["inputs"][0]["shape"] == [-1, 16]
    stats = service_pb2.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", inference_count=7)
    model.inference_stats.success.count = 3
    printed = message_to_json(stats, defaults=True)["model_stats"][0]
    assert printed["inference_count"] == 7 and printed["last_inference"] == 0
    assert printed["inference_stats"]["success"] == {"count": 3, "ns": 0}
