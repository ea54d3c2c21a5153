"""Property-based round trips: arrays <-> raw bytes <-> typed contents, for every dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2

from dynamo_triton.dtypes import DType, DTypeTable, default_table
from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.tensors import (
    array_from_raw,
    array_to_raw,
    contents_to_raw,
    count_bytes_elements,
    decode_bytes,
    encode_bytes,
    expected_byte_size,
    raw_to_contents,
)

FIXED = [row for row in default_table().rows() if row.itemsize > 0]
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)


def arrays_of(kserve: str) -> st.SearchStrategy[np.ndarray]:
    numpy_dtype = default_table().by_kserve(kserve).numpy
    if kserve == "BF16":  # hypothesis has no bfloat16: draw float32 values exactly representable in bf16
        return hnp.arrays(np.float32, shapes, elements=st.floats(-1e4, 1e4, width=16)).map(
            lambda a: a.astype(ml_dtypes.bfloat16)
        )
    return hnp.arrays(numpy_dtype, shapes)


@pytest.mark.parametrize("kserve", [row.kserve for row in FIXED])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_fixed_size_arrays_round_trip_through_raw(kserve: str, data: st.DataObject) -> None:
    array = data.draw(arrays_of(kserve))
    raw = array_to_raw(array, kserve)
    assert len(raw) == expected_byte_size(kserve, array.shape)
    back = array_from_raw(raw, kserve, array.shape)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()  # bitwise: NaNs included


def test_array_from_raw_is_a_view_not_a_copy() -> None:
    raw = bytearray(np.arange(8, dtype=np.int32).tobytes())
    view = array_from_raw(memoryview(raw), "INT32", [2, 4])
    raw[0] = 42
    assert view[0, 0] == 42


byte_elements = st.lists(st.binary(max_size=40), max_size=30)


@settings(max_examples=200, deadline=None)
@given(items=byte_elements)
def test_bytes_codec_round_trips_any_binary(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    raw = encode_bytes(array)
    assert len(raw) == sum(4 + len(x) for x in items)
    assert count_bytes_elements(raw) == len(items)
    assert decode_bytes(raw).tolist() == items
    assert decode_bytes(memoryview(raw), count=len(items)).tolist() == items


def test_bytes_arrays_keep_their_shape_and_accept_str() -> None:
    array = np.array([["a", "bb"], ["", "dddd"]], dtype=object)
    back = array_from_raw(encode_bytes(array), "BYTES", [2, 2])
    assert back.tolist() == [[b"a", b"bb"], [b"", b"dddd"]]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00\x00\x00abc", "declares 5 bytes but only 3 remain"),
        (b"\x01\x00\x00\x00a\x02\x00", "too few"),
        (b"\x01\x00", "too few"),
    ],
)
def test_malformed_bytes_are_rejected_clearly(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        count_bytes_elements(raw)


def test_bytes_count_mismatch_is_an_error() -> None:
    with pytest.raises(InvalidRequestError, match="holds 1 element"):
        decode_bytes(encode_bytes(np.array([b"x"], dtype=object)), count=2)


def test_wrong_raw_size_names_the_expectation() -> None:
    with pytest.raises(InvalidRequestError, match="expected 12 bytes for shape \\[3\\] of INT32, got 8"):
        array_from_raw(b"\0" * 8, "INT32", [3])


TYPED = [row for row in default_table().rows() if row.contents_field is not None]


@pytest.mark.parametrize("kserve", [row.kserve for row in TYPED])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_typed_contents_round_trip_with_raw(kserve: str, data: st.DataObject) -> None:
    if kserve == "BYTES":
        items = data.draw(byte_elements)
        raw = encode_bytes(np.array(items, dtype=object)) if items else b""
    else:
        array = data.draw(arrays_of(kserve))
        raw = array_to_raw(array, kserve)
    contents = service_pb2.InferTensorContents()
    raw_to_contents(raw, kserve, contents)
    assert contents_to_raw(contents, kserve) == raw


@pytest.mark.parametrize("kserve", ["FP16", "BF16"])
def test_half_floats_have_no_typed_contents(kserve: str) -> None:
    with pytest.raises(InvalidRequestError, match="raw_input_contents"):
        contents_to_raw(service_pb2.InferTensorContents(), kserve)


equal_width_elements = st.integers(0, 9).flatmap(lambda width: st.lists(st.binary(min_size=width, max_size=width)))


@settings(max_examples=100, deadline=None)
@given(items=equal_width_elements)
def test_bytes_codec_round_trips_equal_length_elements(items: list[bytes]) -> None:
    raw = encode_bytes(items)
    assert raw == b"".join(len(x).to_bytes(4, "little") + x for x in items)
    assert count_bytes_elements(raw) == len(items)
    assert decode_bytes(bytearray(raw), count=len(items)).tolist() == items


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bytes_tensors_of_any_shape_round_trip(data: st.DataObject) -> None:
    shape = data.draw(shapes)
    items = data.draw(st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    array = np.empty(len(items), dtype=object)
    array[:] = items
    array = array.reshape(shape)
    back = array_from_raw(array_to_raw(array, "BYTES"), "BYTES", shape)
    assert back.shape == array.shape and back.tolist() == array.tolist()


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(max_size=64), byte_elements.map(lambda items: encode_bytes(items)[:-1])))
def test_any_buffer_is_either_valid_bytes_or_rejected(raw: bytes) -> None:
    """The counting walk and the decoder agree on every buffer, and accept only exact encodings."""
    try:
        count = count_bytes_elements(raw)
    except InvalidRequestError:
        with pytest.raises(InvalidRequestError, match="malformed BYTES"):
            decode_bytes(raw)
        return
    items = decode_bytes(raw, count=count).tolist()
    assert encode_bytes(items) == raw


def test_trailing_garbage_after_whole_elements_is_rejected() -> None:
    valid = encode_bytes([b"ab", b"cd"])
    with pytest.raises(InvalidRequestError, match="element 2 at offset 12 declares 1684234849 bytes"):
        decode_bytes(valid + b"abcd")
    with pytest.raises(InvalidRequestError, match="holds 3 element"):
        array_from_raw(valid + encode_bytes([b""]), "BYTES", [2])


def test_encode_accepts_text_numpy_strings_and_other_objects() -> None:
    assert decode_bytes(encode_bytes(np.array(["é", "ab"]))).tolist() == ["é".encode(), b"ab"]
    assert decode_bytes(encode_bytes(np.array([b"x", b"yz"]))).tolist() == [b"x", b"yz"]
    assert decode_bytes(encode_bytes(np.array([7, "é", b"q"], dtype=object))).tolist() == [b"7", "é".encode(), b"q"]
    views = np.empty(1, dtype=object)
    views[0] = memoryview(np.array([1, 2], dtype=np.int32))  # len() is 2, but it is 8 bytes
    assert decode_bytes(encode_bytes(views)).tolist() == [np.array([1, 2], dtype=np.int32).tobytes()]
    assert encode_bytes(np.empty((0, 3), dtype=object)) == b""


@pytest.mark.parametrize(
    ("kserve", "field", "value"),
    [("INT8", "int_contents", 300), ("INT16", "int_contents", -40000), ("UINT8", "uint_contents", 256)],
)
def test_typed_values_out_of_the_dtype_range_are_rejected(kserve: str, field: str, value: int) -> None:
    contents = service_pb2.InferTensorContents()
    getattr(contents, field).extend([1, value])
    with pytest.raises(InvalidRequestError, match=f"value {value} is out of range for {kserve}"):
        contents_to_raw(contents, kserve)


def test_raw_that_is_not_whole_elements_is_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="not a whole number of FP32"):
        raw_to_contents(b"\0" * 6, "FP32", service_pb2.InferTensorContents())
    with pytest.raises(InvalidRequestError, match="negative dimension"):
        array_from_raw(b"", "FP32", [-1])


def test_non_native_arrays_are_sent_little_endian() -> None:
    assert array_to_raw(np.array([1, 2], dtype=">i4")) == np.array([1, 2], dtype="<i4").tobytes()
    assert array_to_raw(np.array([True, False])) == b"\x01\x00"


def test_plugin_dtypes_work_through_an_explicit_table() -> None:
    table = DTypeTable(default_table().rows())
    table.add(DType("FP8E4M3", np.dtype(ml_dtypes.float8_e4m3fn), "TYPE_FP8", "Float8", 1, None))
    array = np.array([0.5, -2.0], dtype=ml_dtypes.float8_e4m3fn)
    raw = array_to_raw(array, "FP8E4M3", table=table)
    assert expected_byte_size("FP8E4M3", [2], table=table) == len(raw) == 2
    assert array_from_raw(raw, "FP8E4M3", [2], table=table).tolist() == array.tolist()
