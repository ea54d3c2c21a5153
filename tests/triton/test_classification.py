"""The classification extension: Triton's top-K, order, formatting, shapes and errors, then through real Triton."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from dyntriton_backend_triton.classification import class_count, classify, top_k
from dyntriton_backend_triton.stdsort import reference_sort_order, sort_order
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from dynamo_triton.backend import BackendSettings
from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.tensors import array_to_raw, decode_bytes

MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"
LABELS = {0: b"zero", 1: b"one", 3: b"three"}  # index 2: an empty line, so no label


def no_label(_index: int) -> bytes | None:
    return None


def run(array: np.ndarray, datatype: str, k: int, *, batched: bool = True, labels=None) -> tuple[tuple, list[str]]:
    """classify() over ``array``; its shape and entries as text."""
    label_of = labels.get if labels is not None else no_label
    shape, data = classify("OUT", array.tobytes(), datatype, array.shape, k=k, batched=batched, label_of=label_of)
    return shape, [item.decode() for item in decode_bytes(data)]


def requested(k: object = None, **extra: object) -> service_pb2.ModelInferRequest.InferRequestedOutputTensor:
    output = service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="OUT")
    if isinstance(k, bool):
        output.parameters["classification"].bool_param = k
    elif isinstance(k, int):
        output.parameters["classification"].int64_param = k
    elif isinstance(k, str):
        output.parameters["classification"].string_param = k
    for key, value in extra.items():
        output.parameters[key].string_param = str(value)
    return output


# -- formatting, order, shapes --------------------------------------------------------------------


def test_int32_prints_plain_integers_highest_first_ties_by_index() -> None:
    shape, entries = run(np.array([[3, 16, 7, 16, 1]], np.int32), "INT32", 3)
    assert shape == (1, 3)
    assert entries == ["16:1", "16:3", "7:2"]


def test_fp32_prints_like_std_to_string() -> None:
    values = np.array([[16.0, 0.5, -2.25, 1e-7, 123456789.0, -0.0]], np.float32)
    _, entries = run(values, "FP32", 6)
    assert entries == [
        "123456792.000000:4",  # the float32 nearest 123456789, printed as %f of its double
        "16.000000:0",
        "0.500000:1",
        "0.000000:3",
        "-0.000000:5",
        "-2.250000:2",
    ]


def test_fp64_and_other_integer_types_print_their_full_value() -> None:
    _, entries = run(np.array([[0.1, 1e20]], np.float64), "FP64", 2)
    assert entries == ["100000000000000000000.000000:1", "0.100000:0"]
    _, entries = run(np.array([[2**64 - 1, 7]], np.uint64), "UINT64", 1)
    assert entries == ["18446744073709551615:0"]
    _, entries = run(np.array([[-128, -3, 5]], np.int8), "INT8", 3)
    assert entries == ["5:2", "-3:1", "-128:0"]
    _, entries = run(np.array([[200, 255]], np.uint8), "UINT8", 2)
    assert entries == ["255:1", "200:0"]


def test_infinities_and_nan_print_as_glibc_does() -> None:
    nan, negative_nan = np.float32("nan"), -np.float32("nan")
    assert np.signbit(negative_nan)
    _, entries = run(np.array([[np.inf, -np.inf, 1.0]], np.float32), "FP32", 3)
    assert entries == ["inf:0", "1.000000:2", "-inf:1"]
    # NaN compares false both ways: the order is whatever std::sort's steps make of it (checked with g++).
    _, entries = run(np.array([[1.0, nan, 3.0, negative_nan]], np.float32), "FP32", 4)
    assert entries == ["3.000000:2", "1.000000:0", "nan:1", "-nan:3"]


def test_k_larger_than_the_class_count_answers_every_class() -> None:
    shape, entries = run(np.array([[2, 9, 4]], np.int32), "INT32", 10)
    assert shape == (1, 3) and entries == ["9:1", "4:2", "2:0"]


def test_each_batch_item_is_ranked_on_its_own_over_all_its_elements() -> None:
    batch = np.array([[[1, 5], [3, 0]], [[7, 7], [2, 9]]], np.int32)  # [2, 2, 2]: items of 4 elements
    shape, entries = run(batch, "INT32", 2)
    assert shape == (2, 2)
    assert entries == ["5:1", "3:2", "9:3", "7:0"]


def test_without_a_batch_dimension_the_whole_tensor_is_one_item() -> None:
    shape, entries = run(np.array([[1, 5], [3, 0]], np.int32), "INT32", 3, batched=False)
    assert shape == (3,) and entries == ["5:1", "3:2", "1:0"]


def test_an_empty_batch_answers_shape_zero_like_triton() -> None:
    # Triton takes batch size 0 for "no batch": one item of 0 elements, shape [0].
    shape, entries = run(np.zeros((0, 4), np.int32), "INT32", 2)
    assert shape == (0,) and entries == []


def test_labels_follow_the_index_when_the_label_file_has_one() -> None:
    _, entries = run(np.array([[0.25, 0.5, 0.75, 1.0, 0.0]], np.float32), "FP32", 5, labels=LABELS)
    assert entries == ["1.000000:3:three", "0.750000:2", "0.500000:1:one", "0.250000:0:zero", "0.000000:4"]


def test_labels_are_read_once_per_distinct_class() -> None:
    asked: list[int] = []

    def label_of(index: int) -> bytes | None:
        asked.append(index)
        return LABELS.get(index)

    batch = np.array([[1, 0, 3], [1, 0, 3], [0, 1, 3]], np.int32)
    classify("OUT", batch.tobytes(), "INT32", batch.shape, k=2, batched=True, label_of=label_of)
    assert sorted(asked) == [0, 1, 2]  # six entries, three distinct classes


# -- ties: std::sort as libstdc++ does it -----------------------------------------------------------


def test_up_to_16_classes_ties_keep_index_order() -> None:
    values = np.array([[1, 4, 4, 2, 4, 1, 0, 4, 3, 3, 4, 2, 1, 0, 4, 4]], np.int32)
    _, entries = run(values, "INT32", 8)
    assert entries == ["4:1", "4:2", "4:4", "4:7", "4:10", "4:14", "4:15", "3:8"]


def test_past_16_classes_ties_come_out_in_std_sort_order_not_index_order() -> None:
    values = np.zeros(17, np.int32)  # all tied: the median-of-3 pivot and Hoare's swaps reorder them
    assert reference_sort_order(values.tolist())[:4] != [0, 1, 2, 3]
    _, entries = run(values.reshape(1, 17), "INT32", 4)
    assert entries == [f"0:{i}" for i in reference_sort_order(values.tolist())[:4]]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=1, max_size=300),
    st.integers(1, 40),
)
def test_the_vectorised_order_matches_the_step_by_step_emulation(values: list[int], head: int) -> None:
    array = np.array(values, np.int64)
    assert sort_order(array, head).tolist() == reference_sort_order(values)[:head]
    assert top_k(array.reshape(1, -1), head)[0].tolist() == reference_sort_order(values)[:head]


def _gxx_sort(rows: list[np.ndarray], tmp: Path) -> list[list[int]]:
    """Triton's own ranking code (std::sort over indices with ``>``) compiled by g++, run over ``rows``."""
    source = tmp / "rank.cc"
    source.write_text(
        "#include <algorithm>\n#include <cstdint>\n#include <iostream>\n#include <numeric>\n#include <vector>\n"
        "int main() { size_t rows; std::cin >> rows; for (size_t r = 0; r < rows; ++r) {\n"
        "  size_t n; std::cin >> n; std::vector<int64_t> p(n); for (auto& x : p) std::cin >> x;\n"
        "  const int64_t* probs = p.data(); std::vector<size_t> idx(n); std::iota(idx.begin(), idx.end(), 0);\n"
        "  std::sort(idx.begin(), idx.end(), [&probs](size_t a, size_t b) { return probs[a] > probs[b]; });\n"
        "  for (size_t i = 0; i < n; ++i) std::cout << idx[i] << ' '; std::cout << '\\n'; } }\n"
    )
    subprocess.run(["g++", "-O2", "-o", str(tmp / "rank"), str(source)], check=True)
    text = f"{len(rows)}\n" + "".join(f"{len(row)} {' '.join(map(str, row.tolist()))}\n" for row in rows)
    out = subprocess.run([str(tmp / "rank")], input=text, capture_output=True, text=True, check=True).stdout
    return [[int(x) for x in line.split()] for line in out.splitlines()]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (libstdc++'s std::sort is the reference)")
def test_the_order_is_libstdcxx_std_sort_compiled_for_real(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows = [rng.integers(-spread, spread + 1, n) for n in (17, 18, 40, 100, 1000) for spread in (0, 1, 3, 50)]
    rows += [np.arange(200), np.arange(200)[::-1].copy(), np.sort(rng.integers(0, 4, 500))]
    # Musser's median-of-3 killer drives introsort into its heap-sort fallback.
    half = 256
    killer = [0] * (2 * half)
    for i in range(1, half + 1):
        if i % 2:
            killer[i - 1], killer[i] = i, half + i
        killer[half + i - 1] = 2 * i
    rows.append(np.array(killer))
    for row, expected in zip(rows, _gxx_sort(rows, tmp_path), strict=True):
        assert reference_sort_order(row.tolist()) == expected
        assert sort_order(row, 5).tolist() == expected[:5]
        assert top_k(row.reshape(1, -1), 3)[0].tolist() == expected[:3]


def test_rows_are_ranked_independently_in_one_vectorised_call() -> None:
    rows = np.array([[5, 5] + [0] * 18, [1] * 20, list(range(20))], np.int32)
    best = top_k(rows, 3)
    for row, got in zip(rows, best, strict=True):
        assert got.tolist() == reference_sort_order(row.tolist())[:3]


# -- the parameter and the errors (Triton's checks and wording) ---------------------------------------


def test_class_count_reads_int64_param() -> None:
    assert class_count(requested()) is None
    assert class_count(requested(3)) == 3
    assert class_count(requested(2**32 + 2)) == 2  # Triton keeps K in a uint32_t


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (requested(0), "invalid value for 'classification' parameter, expected >= 1"),
        (requested(-2), "invalid value for 'classification' parameter, expected >= 1"),
        (requested("3"), "invalid value type for 'classification' parameter, expected int64_param"),
        (requested(True), "invalid value type for 'classification' parameter, expected int64_param"),
        (requested(2, shared_memory_region="r"), "output can't set both 'shared_memory_region' and 'classification'"),
    ],
)
def test_bad_classification_parameters_are_invalid_argument(output, expected: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        class_count(output)
    assert expected in info.value.message and "'OUT'" in info.value.message
    assert info.value.status == "INVALID_ARGUMENT"


@pytest.mark.parametrize("datatype", ["FP16", "BF16", "BOOL", "BYTES"])
def test_outputs_triton_cannot_rank_are_invalid_argument(datatype: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        classify("OUT", b"\0\0\0\0", datatype, (1, 2), k=1, batched=True, label_of=no_label)
    assert f"class result not available for output due to unsupported type '{datatype}'" in info.value.message
    assert info.value.status == "INVALID_ARGUMENT" and info.value.hint


# -- through the embedded Triton: labels from the model's label_filename ------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(require_triton: None) -> AsyncIterator[object]:
    from dyntriton_backend_triton.backend import TritonBackend

    triton = TritonBackend(BackendSettings(model_repository=str(MODEL_REPO)))
    await triton.start()
    await triton.load_model("classify")
    yield triton
    await triton.stop()


def classify_request(values: np.ndarray, **counts: int) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="classify", id="c1")
    item = message.inputs.add(name="INPUT0", datatype="FP32")
    item.shape.extend(values.shape)
    message.raw_input_contents.append(array_to_raw(values.astype(np.float32), "FP32"))
    for name, k in counts.items():
        output = message.outputs.add(name=name)
        if k:
            output.parameters["classification"].int64_param = k
    return message


@pytest.mark.asyncio(loop_scope="module")
async def test_embedded_triton_answers_classifications_with_the_models_labels(backend) -> None:
    values = np.array([[0.5, 3.0, 2.0, 2.5] + [0.0] * 18 + [9.0], [1.0] * 23])
    [response] = [r async for r in backend.infer(classify_request(values, FP32_LABELLED=2, INT32=3, FP32=0))]
    out = {t.name: (t, raw) for t, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
    tensor, raw = out["FP32_LABELLED"]
    entries = decode_bytes(raw)
    assert tensor.datatype == "BYTES" and list(tensor.shape) == [2, 2]
    assert entries[:2].tolist() == [b"9.000000:22", b"3.000000:1:one"]  # 22 is past the 20 labels
    tied = reference_sort_order([1.0] * 23)  # 23 equal values: past 16, std::sort's order, not 0, 1, ...
    assert entries[2:].tolist() == [f"1.000000:{i}".encode() + labelled(i) for i in tied[:2]]
    tensor, raw = out["INT32"]
    assert tensor.datatype == "BYTES" and list(tensor.shape) == [2, 3]
    as_int = values.astype(np.int32)[0].tolist()  # 2.5 becomes 2: tied with index 2
    assert decode_bytes(raw)[:3].tolist() == [b"%d:%d" % (as_int[i], i) for i in reference_sort_order(as_int)[:3]]
    tensor, _ = out["FP32"]  # not asked as a classification: the raw tensor
    assert tensor.datatype == "FP32" and list(tensor.shape) == [2, 23]

    chunks = [c async for c in backend.infer_serialized(classify_request(values, INT32_LABELLED=1))]
    parsed = service_pb2.ModelInferResponse.FromString(b"".join(chunks[0]))
    assert parsed.outputs[0].datatype == "BYTES" and list(parsed.outputs[0].shape) == [2, 1]
    assert decode_bytes(parsed.raw_output_contents[0]).tolist() == [b"9:22", b"1:%d" % tied[0] + labelled(tied[0])]


def labelled(index: int) -> bytes:
    """``:label`` for ``index`` from classify's labels.txt, or nothing (past its end, or an empty line)."""
    lines = (MODEL_REPO / "classify" / "labels.txt").read_bytes().splitlines()
    return b":" + lines[index] if index < len(lines) and lines[index] else b""


@pytest.mark.asyncio(loop_scope="module")
async def test_embedded_triton_rejects_bad_classifications_as_invalid_argument(backend) -> None:
    values = np.ones((1, 4))
    with pytest.raises(InvalidRequestError, match="unsupported type 'FP16'"):
        [r async for r in backend.infer(classify_request(values, FP16=2))]
    with pytest.raises(InvalidRequestError, match="expected >= 1"):
        [r async for r in backend.infer(classify_request(values, INT32=-1))]
    # The same backend still answers after the errors.
    [response] = [r async for r in backend.infer(classify_request(values, INT32=1))]
    assert decode_bytes(response.raw_output_contents[0]).tolist() == [b"1:0"]
