"""ModelStreamInfer keeps Triton's semantics: request order for non-decoupled models, bounded memory."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from dyntriton_frontend_kserve_grpc.options import GrpcSettings
from tritonclient.grpc import service_pb2

from dynamo_triton.testing.wait import until


def _request(
    model: str, request_id: str, values: np.ndarray, *, datatype: str = "INT32"
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="INPUT0", datatype=datatype, shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())
    return request


def _stream_call(channel: grpc.aio.Channel):
    return channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )()


async def test_answers_come_back_in_request_order_whatever_order_requests_finish(grpc_frontend, service):
    """Good requests finish in reverse order and bad ones fail at once: answers keep request order."""
    count = 12
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_frontend.port}") as channel:
        call = _stream_call(channel)
        for index in range(count):
            if index % 2:  # wrong dtype: rejected by validation before it runs
                await call.write(_request("gated", f"r{index}", np.arange(4, dtype=np.float32), datatype="FP32"))
            else:
                await call.write(_request("gated", f"r{index}", np.full(4, index, dtype=np.int32)))
        await call.done_writing()
        await until(lambda: len(service.gates) == count // 2, 20, "every good request to reach the workers")
        for index in reversed(range(0, count, 2)):  # the good requests finish last-first
            service.gates[f"r{index}"].set()
        answers = [answer async for answer in call]
    assert [answer.infer_response.id for answer in answers] == [f"r{i}" for i in range(count)]
    for index, answer in enumerate(answers):
        if index % 2:
            assert "data-type is 'FP32'" in answer.error_message
        else:
            assert not answer.error_message
            assert np.frombuffer(answer.infer_response.raw_output_contents[0], np.int32).tolist() == [index] * 4


@pytest.fixture
async def narrow_frontend(service):
    """A gRPC frontend whose streams hold at most 8 requests and 1 MiB of unsent answers."""
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    settings = GrpcSettings(host="127.0.0.1", port=0, stream_window=8, stream_max_pending_bytes=1 << 20)
    frontend = KServeGrpcFrontend(settings, service)
    await frontend.start()
    try:
        yield frontend
    finally:
        await frontend.stop(grace=0.5)


async def test_a_client_that_never_reads_is_pushed_back_on(narrow_frontend, service):
    """3,000 requests of 64 KiB from a client that reads nothing: the frontend takes in only its window."""
    payload = np.zeros(16 * 1024, dtype=np.int32)  # 64 KiB in, 64 KiB out per request
    total = 3000
    async with grpc.aio.insecure_channel(f"127.0.0.1:{narrow_frontend.port}") as channel:
        call = _stream_call(channel)
        sent = 0

        async def write_all() -> None:
            nonlocal sent
            for index in range(total):
                await call.write(_request("identity", str(index), payload))
                sent += 1
            await call.done_writing()

        writer = asyncio.ensure_future(write_all())
        await until(lambda: service.calls >= 8, 20, "the first window of requests to run")
        # The client cannot get everything in while it reads nothing: flow control holds it back.
        done, _ = await asyncio.wait({writer}, timeout=3)
        assert not done, f"all {total} requests were taken in although the client read no answer"
        # Taken in: the window (8) plus what gRPC's own flow-control buffers hold (a few MiB), not 3,000.
        assert service.calls <= 8 + 128, f"the frontend ran {service.calls} requests of an unread stream"
        assert sent < total

        # Once the client reads, everything is answered, in order, and nothing is lost.
        ids = []
        async for answer in call:
            assert not answer.error_message, answer.error_message
            ids.append(answer.infer_response.id)
            if len(ids) == total:
                break
        await writer
        assert ids == [str(i) for i in range(total)]
