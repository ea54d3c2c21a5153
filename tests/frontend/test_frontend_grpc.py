"""The KServe gRPC frontend driven by the real tritonclient against an in-test routing core."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from dyntriton_frontend_kserve_grpc.server import stream_response_bytes
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def _client(frontend) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{frontend.port}")


def _input(values: np.ndarray, name: str = "INPUT0", dtype: str = "INT32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), dtype)
    tensor.set_data_from_numpy(values)
    return tensor


async def test_frontend_grpc_server_and_model_rpcs(grpc_frontend, service):
    client = _client(grpc_frontend)
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("identity")
        assert not await client.is_model_ready("nope")
        metadata = await client.get_server_metadata()
        assert metadata.name == "triton" and "model_configuration" in metadata.extensions
        assert "model_repository" not in metadata.extensions  # load/unload is not available
        model = await client.get_model_metadata("identity")
        assert model.name == "identity" and model.inputs[0].name == "INPUT0"
        config = await client.get_model_config("identity")
        assert config.config.input[0].name == "INPUT0"
        index = await client.get_model_repository_index()
        assert [m.name for m in index.models] == ["broken", "dead", "gated", "identity", "repeat", "slow"]
        stats = await client.get_inference_statistics("identity")
        assert [s.name for s in stats.model_stats] == ["identity"]
        assert stats.model_stats[0].inference_count == 7
        service.ready_flag = False
        assert not await client.is_server_ready()
    finally:
        await client.close()


async def test_frontend_grpc_infer_identity_and_deadline_passed(grpc_frontend, service):
    client = _client(grpc_frontend)
    try:
        values = np.arange(16, dtype=np.int32)
        result = await client.infer("identity", [_input(values)], request_id="r1", client_timeout=10)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values)
        assert result.get_response().id == "r1"
        assert service.timeouts[-1] is not None and 0 < service.timeouts[-1] <= 11  # gRPC rounds wire deadlines up
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("model", "inputs", "code", "message"),
    [
        ("nope", None, "StatusCode.NOT_FOUND", "model 'nope' is not served"),
        ("dead", None, "StatusCode.UNAVAILABLE", "no live instance of model 'dead'"),
        (
            "identity",
            lambda: [_input(np.zeros(2, np.float32), dtype="FP32")],
            "StatusCode.INVALID_ARGUMENT",
            "inference input 'INPUT0' data-type is 'FP32', but model 'identity' expects 'INT32'",
        ),
        (
            "identity",
            lambda: [_input(np.zeros(2, np.int32), name="X")],
            "StatusCode.INVALID_ARGUMENT",
            "unexpected inference input 'X' for model 'identity'",
        ),
        (
            "identity",
            lambda: [_input(np.zeros((2, 3), np.int32))],
            "StatusCode.INVALID_ARGUMENT",
            "unexpected shape for input 'INPUT0' for model 'identity'. Expected [-1], got [2,3]",
        ),
        (
            "repeat",
            None,
            "StatusCode.INVALID_ARGUMENT",
            "ModelInfer RPC doesn't support models with decoupled transaction policy",
        ),
    ],
)
async def test_frontend_grpc_infer_errors(grpc_frontend, model, inputs, code, message):
    client = _client(grpc_frontend)
    tensors = inputs() if inputs else [_input(np.zeros(2, np.int32))]
    try:
        with pytest.raises(InferenceServerException) as caught:
            await client.infer(model, tensors)
        assert caught.value.status() == code
        assert message in caught.value.message()
    finally:
        await client.close()


async def test_frontend_grpc_deadline_exceeded_and_cancel_reaches_service(grpc_frontend, service):
    client = _client(grpc_frontend)
    try:
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("slow", [_input(np.zeros(2, np.int32))], client_timeout=0.3)
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        for _ in range(100):
            if service.cancelled:
                break
            await asyncio.sleep(0.05)
        assert service.cancelled == ["slow"]
    finally:
        await client.close()


async def test_frontend_grpc_client_cancel_reaches_service(grpc_frontend, service):
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
    request.raw_input_contents.append(b"\0\0\0\0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_frontend.port}") as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        for _ in range(100):
            if service.timeouts:
                break
            await asyncio.sleep(0.02)
        assert service.timeouts == [None]  # no client deadline: no timeout
        call.cancel()
        for _ in range(100):
            if service.cancelled:
                break
            await asyncio.sleep(0.05)
    assert service.cancelled == ["slow"]


async def test_frontend_grpc_stream_infer_with_in_stream_errors(grpc_frontend):
    def request(model: str, request_id: str, name: str = "INPUT0") -> service_pb2.ModelInferRequest:
        message = service_pb2.ModelInferRequest(model_name=model, id=request_id)
        message.inputs.add(name=name, datatype="INT32", shape=[1])
        message.raw_input_contents.append(np.int32(5).tobytes())
        return message

    requests = [
        request("identity", "a"),
        request("nope", "b"),
        request("identity", "c", name="X"),
        request("repeat", "d"),
        request("dead", "e"),
        request("broken", "f"),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_frontend.port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        responses = [r async for r in stub.ModelStreamInfer(iter(requests))]
    ok = sorted(r.infer_response.id for r in responses if not r.error_message)
    errors = {r.infer_response.id: r.error_message for r in responses if r.error_message}
    assert ok == ["a", "d", "d", "d"]
    assert set(errors) == {"b", "c", "e", "f"}
    assert errors["f"].startswith("internal error in the frontend: RuntimeError('a bug in the routing core')")
    assert "model 'nope' is not served" in errors["b"]
    assert errors["c"] == "unexpected inference input 'X' for model 'identity'"
    assert "no live instance" in errors["e"]
    echoed = next(r for r in responses if r.infer_response.id == "a").infer_response
    assert np.frombuffer(echoed.raw_output_contents[0], np.int32).tolist() == [5]


def test_frontend_grpc_stream_wrapper_bytes_parse_as_protobuf():
    response = service_pb2.ModelInferResponse(model_name="m", id="x")
    response.raw_output_contents.append(b"\1" * 300)
    wrapped = service_pb2.ModelStreamInferResponse.FromString(stream_response_bytes(response.SerializeToString()))
    assert wrapped.infer_response == response and wrapped.error_message == ""
    assert (
        stream_response_bytes(b"")
        == service_pb2.ModelStreamInferResponse(infer_response=service_pb2.ModelInferResponse()).SerializeToString()
    )


async def test_frontend_grpc_unimplemented_rpcs(grpc_frontend):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_frontend.port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in [
            (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="identity")),
            (stub.SystemSharedMemoryStatus, service_pb2.SystemSharedMemoryStatusRequest()),
            (stub.TraceSetting, service_pb2.TraceSettingRequest()),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "not supported by dyntriton" in caught.value.details()


async def test_frontend_grpc_health_and_reflection(grpc_frontend, service):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_frontend.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(40):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        service.ready_flag = False
        for _ in range(40):
            answer = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
            if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.1)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            r
            async for r in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


async def test_frontend_grpc_64_mib_tensor_round_trip(grpc_frontend):
    values = np.arange(16 * 1024 * 1024, dtype=np.int32)  # 64 MiB
    client = _client(grpc_frontend)
    try:
        result = await client.infer("identity", [_input(values)])
        assert np.array_equal(result.as_numpy("OUTPUT0"), values)
    finally:
        await client.close()


async def test_frontend_grpc_large_requests_are_validated_without_parsing_their_tensors(grpc_frontend, service):
    """Above 64 KiB the tensors are located in the request bytes (not copied): the checks still apply."""
    request = service_pb2.ModelInferRequest(model_name="identity", id="big")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[300_000])
    request.raw_input_contents.append(np.zeros(300_000, dtype=np.int32).tobytes()[:-4])  # one element short
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_frontend.port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input byte size mismatch for input 'INPUT0' for model 'identity'. Expected 1200000, got 1199996" in (
            caught.value.details()
        )
        request.raw_input_contents[0] = np.arange(300_000, dtype=np.int32).tobytes()
        answer = await stub.ModelInfer(request)
    assert answer.id == "big" and answer.raw_output_contents[0] == request.raw_input_contents[0]


async def test_frontend_grpc_port_taken_is_a_config_error(grpc_frontend, service):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    from dynamo_triton.errors import ConfigError
    from dynamo_triton.frontend import FrontendSettings

    second = KServeGrpcFrontend(FrontendSettings(host="127.0.0.1", port=grpc_frontend.port), service)
    with pytest.raises(
        ConfigError, match=f"cannot listen for KServe gRPC on 127.0.0.1:{grpc_frontend.port}: address already in use"
    ):
        await second.start()
