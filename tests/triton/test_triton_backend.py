"""The triton backend against real Triton: every model, every dtype, streaming, cancellation, errors."""

from __future__ import annotations

import asyncio
import os
import resource

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import ModelNotFoundError, TritonError
from dynamo_triton.tensors import array_from_raw, array_to_raw
from dynamo_triton.testing.wait import until

pytestmark = pytest.mark.asyncio(loop_scope="module")


def request(model: str, **tensors: tuple[str, np.ndarray]) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=model, id="req-1")
    for name, (datatype, array) in tensors.items():
        item = message.inputs.add(name=name, datatype=datatype)
        item.shape.extend(array.shape)
        message.raw_input_contents.append(array_to_raw(array, datatype))
    return message


async def run(backend, message) -> list[service_pb2.ModelInferResponse]:
    return [response async for response in backend.infer(message)]


def outputs(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        tensor.name: array_from_raw(raw, tensor.datatype, tensor.shape)
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def test_identity_round_trip_with_raw_and_typed_contents(backend) -> None:
    data = np.arange(-5, 11, dtype=np.int32).reshape(1, 16)
    [response] = await run(backend, request("identity", INPUT0=("INT32", data)))
    assert response.model_name == "identity" and response.id == "req-1"
    np.testing.assert_array_equal(outputs(response)["OUTPUT0"], data)

    typed = service_pb2.ModelInferRequest(model_name="identity")
    item = typed.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 3])
    item.contents.int_contents.extend([7, 8, 9])
    [response] = await run(backend, typed)
    np.testing.assert_array_equal(outputs(response)["OUTPUT0"], [[7, 8, 9]])


async def test_every_dtype_round_trips_including_bytes_and_bf16(backend) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "FP32_IN": ("FP32", rng.standard_normal(6).astype(np.float32)),
        "FP16_IN": ("FP16", rng.standard_normal(6).astype(np.float16)),
        "BF16_IN": ("BF16", rng.standard_normal(6).astype(ml_dtypes.bfloat16)),
        "INT64_IN": ("INT64", rng.integers(-(2**40), 2**40, 6)),
        "BOOL_IN": ("BOOL", rng.integers(0, 2, 6).astype(bool)),
        "BYTES_IN": ("BYTES", np.array([b"", b"a", b"\x00\xff", "h\u00e9".encode(), b"x" * 300, b"z"], dtype=object)),
    }
    [response] = await run(backend, request("identity_multi", **arrays))
    got = outputs(response)
    for name, (_, array) in arrays.items():
        out = got[name.replace("_IN", "_OUT")]
        assert out.shape == array.shape
        if array.dtype == object:
            assert out.tolist() == array.tolist()
        else:
            assert out.tobytes() == array.tobytes(), name


async def test_batched_model_with_dynamic_batching(backend) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), dtype=np.float32)
    results = await asyncio.gather(
        *(run(backend, request("add_sub", INPUT0=("FP32", a), INPUT1=("FP32", b))) for _ in range(6))
    )
    for [response] in results:
        got = outputs(response)
        np.testing.assert_array_equal(got["OUTPUT0"], a + b)
        np.testing.assert_array_equal(got["OUTPUT1"], a - b)


async def test_decoupled_model_streams_every_response(backend) -> None:
    values = np.array([5, 6, 7, 8], dtype=np.int32)
    responses = await run(backend, request("repeat", IN=("INT32", values)))
    assert [int(outputs(r)["OUT"][0]) for r in responses] == [5, 6, 7, 8]
    assert [int(outputs(r)["IDX"][0]) for r in responses] == [0, 1, 2, 3]
    assert backend.model("repeat").decoupled and not backend.model("identity").decoupled


async def test_closing_the_stream_cancels_a_slow_request(backend) -> None:
    message = request(
        "delay", INPUT0=("INT32", np.arange(4, dtype=np.int32)), DELAY_MS=("UINT32", np.array([5000], np.uint32))
    )
    task = asyncio.ensure_future(run(backend, message))
    await until(lambda: backend.server.in_flight >= 1, 10, "the request to reach Triton")
    task.cancel()
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The model saw the cancellation: the next request is served at once, not after 5 s.
    quick = request(
        "delay", INPUT0=("INT32", np.arange(2, dtype=np.int32)), DELAY_MS=("UINT32", np.array([1], np.uint32))
    )
    quick2 = request(
        "delay", INPUT0=("INT32", np.arange(2, dtype=np.int32)), DELAY_MS=("UINT32", np.array([1], np.uint32))
    )
    await asyncio.wait_for(asyncio.gather(run(backend, quick), run(backend, quick2)), 3)
    assert asyncio.get_running_loop().time() - started < 3


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        (
            {"INPUT0": ("FP32", np.ones((1, 3), np.float32))},
            "data-type is 'FP32', but model 'identity' expects 'INT32'",
        ),
        ({"INPUT0": ("INT32", np.ones((1, 2, 3), np.int32))}, "unexpected shape for input 'INPUT0'"),
        ({"WRONG": ("INT32", np.ones((1, 3), np.int32))}, "unexpected inference input 'WRONG'"),
    ],
)
async def test_bad_requests_surface_tritons_own_message(backend, tensors, expected) -> None:
    with pytest.raises(TritonError) as info:
        await run(backend, request("identity", **tensors))
    assert expected in info.value.message
    assert info.value.status == "INVALID_ARGUMENT"


async def test_unknown_model_names_the_repository_and_its_models(backend) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        await backend.load_model("resnet")
    assert "resnet" in str(info.value) and "model_repo" in str(info.value) and "identity_multi" in str(info.value)
    with pytest.raises(ModelNotFoundError):
        await run(backend, request("resnet", INPUT0=("INT32", np.ones((1, 1), np.int32))))


async def test_unload_and_reload(backend) -> None:
    await backend.unload_model("add_sub")
    with pytest.raises(ModelNotFoundError):
        backend.model("add_sub")
    info = await backend.load_model("add_sub")
    assert info.config.max_batch_size == 8 and info.config.dynamic_batching is not None


async def test_statistics_count_requests(backend) -> None:
    await run(backend, request("identity", INPUT0=("INT32", np.ones((1, 2), np.int32))))
    stats = await backend.statistics("identity")
    assert stats.model_stats[0].name == "identity"
    assert stats.model_stats[0].inference_count >= 1


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_thousand_sequential_inferences_leave_rss_flat(backend) -> None:
    message = request("identity", INPUT0=("INT32", np.arange(4096, dtype=np.int32).reshape(1, -1)))
    for _ in range(200):  # warm up allocator pools
        await run(backend, message)
    before = rss_kib()
    for _ in range(1000):
        await run(backend, message)
    growth = rss_kib() - before
    assert growth < 8 * 1024, f"RSS grew by {growth} KiB over 1,000 requests"


async def test_serialized_responses_equal_the_protobuf_ones(backend) -> None:
    arrays = {
        "FP32_IN": ("FP32", np.arange(5, dtype=np.float32)),
        "FP16_IN": ("FP16", np.ones(5, np.float16)),
        "BF16_IN": ("BF16", np.ones(5, ml_dtypes.bfloat16)),
        "INT64_IN": ("INT64", np.arange(5)),
        "BOOL_IN": ("BOOL", np.ones(5, bool)),
        "BYTES_IN": ("BYTES", np.array([b"a", b"", b"ccc", b"d", b"e"], dtype=object)),
    }
    message = request("identity_multi", **arrays)
    [expected] = await run(backend, message)
    [parts] = [chunk async for chunk in backend.infer_serialized(message)]
    assert service_pb2.ModelInferResponse.FromString(b"".join(parts)) == expected
    streamed = [
        chunk async for chunk in backend.infer_serialized(request("repeat", IN=("INT32", np.arange(3, dtype=np.int32))))
    ]
    parsed = [service_pb2.ModelInferResponse.FromString(b"".join(parts)) for parts in streamed]
    assert [int(outputs(response)["OUT"][0]) for response in parsed] == [0, 1, 2]
