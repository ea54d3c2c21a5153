"""The worker relabels carried datatypes before its backend sees them, and refuses datatypes it does not know.

A real Worker with the shipped ``mem`` store and ``inproc`` transport; the backend is a small
one that records what reached it (the embedded Triton path is covered end to end in
tests/e2e/test_e2e_dtype_plugin.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton import hookimpl
from dynamo_triton.backend import ModelInfo
from dynamo_triton.dtypes import DType
from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.plugins import Plugins, make_plugin_manager
from dynamo_triton.runtime.service import INFER_ENDPOINT
from dynamo_triton.runtime.worker import Worker, WorkerSettings

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


class Fp8Plugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", DType("FP8E4M3", FP8, "TYPE_UINT8", "Float8E4M3", 1, None, carrier="UINT8"))  # type: ignore[operator]


class EchoBackend:
    """Serves one UINT8 model ``echo``; answers each request with its inputs and remembers them."""

    def __init__(self) -> None:
        self.seen: list[service_pb2.ModelInferRequest] = []
        config = model_config_pb2.ModelConfig(name="echo")
        config.input.add(name="IN", data_type=model_config_pb2.TYPE_UINT8, dims=[-1])
        config.output.add(name="OUT", data_type=model_config_pb2.TYPE_UINT8, dims=[-1])
        self.info = ModelInfo("echo", "1", config, service_pb2.ModelMetadataResponse(name="echo"))

    async def start(self) -> None:
        pass

    async def stop(self, *, timeout: float = 30.0) -> None:
        pass

    async def repository_index(self) -> list[str]:
        return ["echo"]

    async def load_model(self, name: str) -> ModelInfo:
        return self.info

    async def unload_model(self, name: str) -> None:
        pass

    def model(self, name: str) -> ModelInfo:
        return self.info

    def server_identity(self) -> tuple[str, str]:
        return ("echo", "1.0")

    async def ready(self) -> bool:
        return True

    async def infer(self, request: service_pb2.ModelInferRequest) -> AsyncIterator[service_pb2.ModelInferResponse]:
        self.seen.append(request)
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        for tensor in request.inputs:
            response.outputs.add(name="OUT", datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.extend(request.raw_input_contents)
        yield response

    async def infer_serialized(self, request: service_pb2.ModelInferRequest, raw_inputs=None) -> AsyncIterator[bytes]:
        if raw_inputs is not None:
            request.raw_input_contents.extend(bytes(raw) for raw in raw_inputs)
        async for response in self.infer(request):
            yield response.SerializeToString()

    async def statistics(self, name: str = "") -> Any:
        return service_pb2.ModelStatisticsResponse()


@pytest.fixture(scope="module")
def shipped() -> Iterator[Plugins]:
    yield make_plugin_manager(env={}, plugins=[("fp8", Fp8Plugin())])


async def ask(worker: Worker, plugins: Plugins, datatype: str, raw: bytes) -> service_pb2.ModelInferResponse:
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="IN", datatype=datatype, shape=[len(raw)])
    request.raw_input_contents.append(raw)
    client = plugins.transport("inproc").client()
    try:
        chunks = [chunk async for chunk in client.call(worker.address, INFER_ENDPOINT, request.SerializeToString())]
    finally:
        await client.close()
    [chunk] = chunks
    return service_pb2.ModelInferResponse.FromString(chunk)


async def started(plugins: Plugins, backend: EchoBackend, *, dtypes: bool) -> Worker:
    worker = Worker(
        backend,
        plugins.kv_store("mem"),
        plugins.transport("inproc"),
        WorkerSettings(lease_ttl=5.0),
        dtypes=plugins.dtype_table() if dtypes else None,
    )
    await worker.start()
    return worker


async def test_a_carried_tensor_reaches_the_backend_as_its_carrier_with_the_same_bytes(shipped: Plugins) -> None:
    backend = EchoBackend()
    worker = await started(shipped, backend, dtypes=True)
    try:
        raw = np.array([0.5, -2.0, 448.0, -0.0], dtype=FP8).tobytes()
        response = await ask(worker, shipped, "FP8E4M3", raw)
        [seen] = backend.seen
        assert [t.datatype for t in seen.inputs] == ["UINT8"]
        assert seen.raw_input_contents[0] == raw
        assert response.outputs[0].datatype == "UINT8" and response.raw_output_contents[0] == raw
        await ask(worker, shipped, "INT8", b"\x01")
        assert backend.seen[1].inputs[0].datatype == "INT8", "core datatypes pass unchanged"
    finally:
        await worker.stop()


async def test_a_worker_without_the_plugin_refuses_the_datatype_by_name(shipped: Plugins) -> None:
    backend = EchoBackend()
    worker = await started(shipped, backend, dtypes=False)
    try:
        with pytest.raises(InvalidRequestError) as caught:
            await ask(worker, shipped, "FP8E4M3", b"\0")
        assert f"inference input 'IN': unknown datatype 'FP8E4M3' on worker {worker.instance_id}" in str(caught.value)
        assert "UINT8" in str(caught.value)
        assert backend.seen == [], "the backend never sees a datatype the worker cannot vouch for"
    finally:
        await worker.stop()
