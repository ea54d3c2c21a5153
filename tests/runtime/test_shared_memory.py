"""The shared-memory region registry and the request pipeline's two paths (copy, by reference), no Triton.

Two registries over one store stand for two frontend processes of one host. A fake routing core
records what would cross the request plane and answers like a worker: echoing the inputs into
the body (the copy path), or with empty contents after writing into the region itself (by reference).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from dyntriton_kv_mem.store import MemStore
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.dtypes import default_table
from dynamo_triton.errors import DyntritonError
from dynamo_triton.frontend import ServedModel
from dynamo_triton.runtime import shared_memory
from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
from dynamo_triton.runtime.pipeline import RequestPipeline
from dynamo_triton.runtime.shared_memory import SharedMemoryRegistry
from dynamo_triton.runtime.shared_memory_requests import LOCAL_HOST, LOCAL_KEY, LOCAL_OFFSET

DATA = np.arange(16, dtype=np.int32).reshape(1, 16)


@pytest.fixture
def region() -> Iterator[tuple[str, object]]:
    key = f"/dt_unit_{os.getpid()}_{id(object())}"
    handle = shm.create_shared_memory_region("unit", key, 2 * DATA.nbytes)
    shm.set_shared_memory_region(handle, [DATA])
    yield key, handle
    if Path(f"/dev/shm{key}").exists():
        shm.destroy_shared_memory_region(handle)


def _mapped(key: str) -> int:
    """Mappings of ``key`` in this process beyond the client's own (the test is the client too)."""
    return sum(f"/dev/shm{key}" in line for line in Path("/proc/self/maps").read_text().splitlines())


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_registry_speaks_tritons_errors(region: tuple[str, object]) -> None:
    key, _ = region
    registry = SharedMemoryRegistry(MemStore(space=f"errors-{id(region)}"), "ns", host="h")
    await registry.register("r", key, 0, DATA.nbytes)
    with pytest.raises(DyntritonError, match=r"^shared memory region 'r' already in manager$") as caught:
        await registry.register("r", key, 0, DATA.nbytes)
    assert caught.value.status == "ALREADY_EXISTS"
    with pytest.raises(DyntritonError, match=r"^Unable to open shared memory region: '/dt_no_such'$"):
        await registry.register("x", "/dt_no_such", 0, 8)
    with pytest.raises(DyntritonError, match=r"^failed to register shared memory region 'x': invalid args$"):
        await registry.register("x", key, 100, 64)
    with pytest.raises(DyntritonError, match=r"^Unable to find system shared memory region: 'nope'$") as caught:
        await registry.status("nope")
    assert caught.value.status == "NOT_FOUND"
    mapped = await registry.region("r")
    with pytest.raises(DyntritonError, match=r"^Invalid offset \+ byte size for shared memory region: 'r'$"):
        mapped.read(32, 64)
    with pytest.raises(DyntritonError, match=r"^Invalid offset for shared memory region: 'r'$"):
        mapped.read(-1, 4)
    await registry.unregister("nope")  # not an error, as in Triton
    await registry.unregister()
    assert await registry.status() == []
    registry.close()


async def test_a_registration_reaches_every_process_and_leaves_nothing_mapped(
    region: tuple[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_memory, "CHECK_INTERVAL", 0.02)
    key, handle = region
    store = MemStore(space=f"processes-{id(region)}")
    first, second = (SharedMemoryRegistry(store, "ns", host="h") for _ in range(2))
    tasks = [asyncio.create_task(registry.run()) for registry in (first, second)]
    try:
        own = _mapped(key)
        await first.register("r", key, 0, 2 * DATA.nbytes)
        found = await second.region("r")  # registered a moment ago through the other process
        assert np.frombuffer(found.read(0, DATA.nbytes), np.int32).tolist() == DATA.ravel().tolist()
        assert _mapped(key) == own + 2
        await first.unregister("r")
        await _until(lambda: _mapped(key) == own, "the other process to unmap an unregistered region")
        with pytest.raises(DyntritonError, match="Unable to find shared memory region: 'r'"):
            await second.region("r")

        await first.register("r", key, 0, 2 * DATA.nbytes)
        await second.region("r")
        shm.destroy_shared_memory_region(handle)  # the client leaves without unregistering
        await _until(lambda: _mapped(key) == 0, "every process to unmap an unlinked object")
        with pytest.raises(DyntritonError, match=f"Unable to open shared memory region: '{key}'"):
            await second.region("r")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Worker:
    """Routing-core double: records each forwarded request and answers as a worker of this host would."""

    def __init__(self, registry: SharedMemoryRegistry, local: bool):
        config = model_config_pb2.ModelConfig(name="identity")
        config.input.add(name="INPUT0", data_type=model_config_pb2.TYPE_INT32, dims=[1, 16])
        config.output.add(name="OUTPUT0", data_type=model_config_pb2.TYPE_INT32, dims=[1, 16])
        self.served = ServedModel("identity", "1", config, service_pb2.ModelMetadataResponse(), False, 1)
        self.metrics, self.dtypes, self.repository = FrontendMetrics(), default_table(), None
        self.shared_memory, self.local = registry, local
        self.payloads: list[bytes] = []

    def model(self, name: str, version: str = "") -> ServedModel:
        return self.served

    def on_host(self, name: str, host: str) -> bool:
        return self.local and host == self.shared_memory.host

    async def infer(self, name: str, payload: bytes, **_: object) -> AsyncIterator[bytes]:
        self.payloads.append(payload)
        request = service_pb2.ModelInferRequest.FromString(payload)
        response = service_pb2.ModelInferResponse(model_name=name, model_version="1")
        response.outputs.add(name="OUTPUT0", datatype="INT32", shape=[1, 16])
        if LOCAL_HOST in request.parameters:  # by reference: "Triton" writes into the region itself
            source, target = request.inputs[0].parameters, request.outputs[0].parameters
            data = Path(f"/dev/shm{source[LOCAL_KEY].string_param}").read_bytes()
            start = source[LOCAL_OFFSET].int64_param
            with open(f"/dev/shm{target[LOCAL_KEY].string_param}", "r+b") as out:
                out.seek(target[LOCAL_OFFSET].int64_param)
                out.write(data[start : start + DATA.nbytes])
            response.raw_output_contents.append(b"")
        else:
            response.raw_output_contents.extend(request.raw_input_contents)
        yield response.SerializeToString()


@pytest.mark.parametrize("local", [True, False], ids=["by reference", "copied"])
async def test_inputs_and_outputs_in_regions_either_way(region: tuple[str, object], local: bool) -> None:
    key, handle = region
    registry = SharedMemoryRegistry(MemStore(space=f"pipeline-{local}-{id(region)}"), "ns", host="h")
    await registry.register("io", key, 0, 2 * DATA.nbytes)
    worker = _Worker(registry, local)
    pipeline = RequestPipeline(worker, "grpc")  # type: ignore[arg-type]
    request = service_pb2.ModelInferRequest(model_name="identity")
    tensor = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    tensor.parameters["shared_memory_region"].string_param = "io"
    tensor.parameters["shared_memory_byte_size"].int64_param = DATA.nbytes
    output = request.outputs.add(name="OUTPUT0")
    output.parameters["shared_memory_region"].string_param = "io"
    output.parameters["shared_memory_byte_size"].int64_param = DATA.nbytes
    output.parameters["shared_memory_offset"].int64_param = DATA.nbytes

    answer = service_pb2.ModelInferResponse.FromString(
        await pipeline.unary(pipeline.prepare_bytes(request.SerializeToString()))
    )

    assert list(answer.raw_output_contents) == [b""]  # Triton's answer: metadata, no contents
    assert shm.get_contents_as_numpy(handle, np.int32, [2, 16])[1].tolist() == DATA.ravel().tolist()
    (payload,) = worker.payloads
    forwarded = service_pb2.ModelInferRequest.FromString(payload)
    if local:
        assert list(forwarded.raw_input_contents) == [b""]  # references, not bytes
        assert forwarded.parameters[LOCAL_HOST].string_param == "h"
    else:
        assert list(forwarded.raw_input_contents) == [DATA.tobytes()]
        assert not any(forwarded.inputs[0].parameters) and not any(forwarded.outputs[0].parameters)
    registry.close()
