"""A small in-test InferenceService (identity echo, slow, unavailable, decoupled) and running frontends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.dtypes import default_table
from dynamo_triton.errors import ModelNotFoundError, NoInstanceError
from dynamo_triton.frontend import FrontendSettings, ServedModel
from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
from dynamo_triton.runtime.sequences import SequenceStep


def _model(name: str, *, decoupled: bool = False, max_batch_size: int = 0) -> ServedModel:
    config = model_config_pb2.ModelConfig(name=name, max_batch_size=max_batch_size)
    config.input.add(name="INPUT0", data_type=model_config_pb2.TYPE_INT32, dims=[-1])
    config.output.add(name="OUTPUT0", data_type=model_config_pb2.TYPE_INT32, dims=[-1])
    config.model_transaction_policy.decoupled = decoupled
    metadata = service_pb2.ModelMetadataResponse(name=name, versions=["1"], platform="test")
    metadata.inputs.add(name="INPUT0", datatype="INT32", shape=[-1])
    metadata.outputs.add(name="OUTPUT0", datatype="INT32", shape=[-1])
    return ServedModel(name, "1", config, metadata, decoupled, 1)


class EchoService:
    """Routing-core double: 'identity' echoes INPUT0 as OUTPUT0, 'slow' waits until cancelled,
    'dead' has no live instance, 'repeat' (decoupled) answers three times, 'gated' echoes once the
    test sets ``gates[request_id]``."""

    def __init__(self) -> None:
        self._models = {
            m.name: m
            for m in (
                _model("identity"),
                _model("slow"),
                _model("dead"),
                _model("broken"),
                _model("repeat", decoupled=True),
                _model("gated"),
            )
        }
        self.gates: dict[str, asyncio.Event] = {}
        self.calls = 0
        self.cancelled: list[str] = []
        self.timeouts: list[float | None] = []
        self.sequences: list[SequenceStep | None] = []
        self.ready_flag = True
        self.metrics = FrontendMetrics()
        self.dtypes = default_table()
        self.repository = None  # no model control: load and unload answer UNIMPLEMENTED

    def ready(self) -> bool:
        return self.ready_flag

    def models(self) -> list[ServedModel]:
        return sorted(self._models.values(), key=lambda m: m.name)

    def model(self, name: str, version: str = "") -> ServedModel:
        if name not in self._models:
            raise ModelNotFoundError(f"model '{name}' is not served; served: {', '.join(sorted(self._models))}")
        return self._models[name]

    @staticmethod
    def _echo(payload: bytes) -> bytes:
        request = service_pb2.ModelInferRequest.FromString(payload)
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for tensor in request.inputs:
            response.outputs.add(name="OUTPUT0", datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.extend(request.raw_input_contents)
        return response.SerializeToString()

    async def infer(
        self, name: str, payload: bytes, *, timeout: float | None = None, sequence: SequenceStep | None = None
    ) -> AsyncIterator[bytes]:
        self.timeouts.append(timeout)
        self.sequences.append(sequence)
        self.calls += 1
        if name == "gated":  # answers when the test opens the gate named by the request id
            request_id = service_pb2.ModelInferRequest.FromString(payload).id
            await self.gates.setdefault(request_id, asyncio.Event()).wait()
        if name == "broken":
            raise RuntimeError("a bug in the routing core")
        if name == "dead":
            raise NoInstanceError(f"no live instance of model '{name}'")
        if name == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise
        if name == "repeat":
            for _ in range(3):
                yield self._echo(payload)
            return
        yield self._echo(payload)

    async def statistics(self, name: str = "") -> service_pb2.ModelStatisticsResponse:
        response = service_pb2.ModelStatisticsResponse()
        for model in self.models():
            if not name or model.name == name:
                response.model_stats.add(name=model.name, version="1", inference_count=7)
        return response


@pytest.fixture
def service() -> EchoService:
    return EchoService()


@pytest.fixture
async def grpc_frontend(service: EchoService):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    frontend = KServeGrpcFrontend(FrontendSettings(host="127.0.0.1", port=0), service)
    await frontend.start()
    try:
        yield frontend
    finally:
        await frontend.stop(grace=0.5)


@pytest.fixture
async def http_frontend(service: EchoService):
    from dyntriton_frontend_http.server import HttpFrontend

    frontend = HttpFrontend(FrontendSettings(host="127.0.0.1", port=0), service)
    await frontend.start()
    try:
        yield frontend
    finally:
        await frontend.stop()
