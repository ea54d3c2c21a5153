"""A small in-test InferenceService (identity echo, slow, unavailable, decoupled) and running frontends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import NoInstanceError
from dynamo_triton.frontend import FrontendSettings
from dynamo_triton.runtime.sequences import SequenceStep
from dynamo_triton.testing.services import ContractService, served_model


class EchoService(ContractService):
    """Routing-core double: 'identity' echoes INPUT0 as OUTPUT0, 'slow' waits until cancelled,
    'dead' has no live instance, 'repeat' (decoupled) answers three times, 'gated' echoes once the
    test sets ``gates[request_id]``. Models take no batch dimension (``max_batch_size`` 0)."""

    def __init__(self) -> None:
        super().__init__()
        models = ("identity", "slow", "dead", "broken", "gated")
        self._models = {name: served_model(name, max_batch_size=0) for name in models}
        self._models["repeat"] = served_model("repeat", decoupled=True, max_batch_size=0)
        self.cancelled: list[str] = []
        self.timeouts: list[float | None] = []
        self.sequences: list[SequenceStep | None] = []

    async def infer(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        sequence: SequenceStep | None = None,
        queue_timeout: float | None = None,
        priority: int = 0,
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
