"""Property-based round trips: arrays <-> raw bytes <-> typed contents, for every dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2

from dynamo_triton.dtypes import default_table
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
