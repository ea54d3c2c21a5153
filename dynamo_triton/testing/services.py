"""InferenceServices to run frontends against in tests: a small double, and a real in-process worker stack.

:class:`ContractService` is a test double of :class:`~dynamo_triton.frontend.InferenceService` (a
frontend's whole interface to the runtime is that protocol), with models that make every part
of the Frontend contract observable: ``identity`` (as model_repo/'s: INT32 ``INPUT0`` -> ``OUTPUT0``,
``max_batch_size`` 8), ``repeat`` (decoupled: three identity answers), ``gated`` (answers once the
test opens ``gates[request_id]``) and ``dead`` (no live instance: UNAVAILABLE).

:func:`routing_service` is the real thing: the routing core a frontend process runs, over the
workers registered in a store (e.g. ``dyntriton worker`` processes); :func:`local_worker_service`
runs such a worker in this process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.backend import BackendSettings
from dynamo_triton.dtypes import default_table
from dynamo_triton.errors import ModelNotFoundError, NoInstanceError
from dynamo_triton.frontend import InferenceService, ModelRepository, ServedModel
from dynamo_triton.kv import KVStore
from dynamo_triton.plugins import Plugins, make_plugin_manager
from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
from dynamo_triton.runtime.sequences import SequenceStep

__all__ = ["ContractService", "local_worker_service", "routing_service", "served_model"]


def served_model(name: str, *, decoupled: bool = False, max_batch_size: int = 8) -> ServedModel:
    """A model as workers would publish it: INT32 ``INPUT0`` -> ``OUTPUT0``, variable length."""
    config = model_config_pb2.ModelConfig(name=name, max_batch_size=max_batch_size)
    config.input.add(name="INPUT0", data_type=model_config_pb2.TYPE_INT32, dims=[-1])
    config.output.add(name="OUTPUT0", data_type=model_config_pb2.TYPE_INT32, dims=[-1])
    config.model_transaction_policy.decoupled = decoupled
    shape = [-1, -1] if max_batch_size else [-1]
    metadata = service_pb2.ModelMetadataResponse(name=name, versions=["1"], platform="test")
    metadata.inputs.add(name="INPUT0", datatype="INT32", shape=shape)
    metadata.outputs.add(name="OUTPUT0", datatype="INT32", shape=shape)
    return ServedModel(name, "1", config, metadata, decoupled, 1)


class ContractService:
    """The InferenceService double of the Frontend contract (see the module docstring).

    :ivar ready_flag: what :meth:`ready` answers (the test flips it).
    :ivar calls: requests that reached :meth:`infer`.
    :ivar gates: per request id, the event a ``gated`` request waits for.
    """

    REPEATS = 3

    def __init__(self) -> None:
        models = (served_model("identity"), served_model("repeat", decoupled=True), served_model("gated"))
        self._models = {m.name: m for m in (*models, served_model("dead"))}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls = 0
        self.ready_flag = True
        self.metrics = FrontendMetrics()
        self.dtypes = default_table()
        self.repository: ModelRepository | None = None  # no model control: load and unload answer UNIMPLEMENTED

    def open_gates(self) -> None:
        """Let every ``gated`` request that arrived go (for protocols that carry no request id, e.g. KServe V1)."""
        for gate in self.gates.values():
            gate.set()

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
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        sequence: SequenceStep | None = None,
        queue_timeout: float | None = None,
        priority: int = 0,
    ) -> AsyncIterator[bytes]:
        self.calls += 1
        if name == "dead":
            raise NoInstanceError(f"no live instance of model '{name}'")
        if name == "gated":
            request_id = service_pb2.ModelInferRequest.FromString(payload).id
            await self.gates.setdefault(request_id, asyncio.Event()).wait()
        for _ in range(self.REPEATS if name == "repeat" else 1):
            yield self._echo(payload)

    async def statistics(self, name: str = "") -> service_pb2.ModelStatisticsResponse:
        response = service_pb2.ModelStatisticsResponse()
        for model in self.models():
            if not name or model.name == name:
                response.model_stats.add(name=model.name, version="1")
        return response


@contextlib.asynccontextmanager
async def routing_service(
    store: KVStore,
    models: Sequence[str] = ("identity",),
    *,
    namespace: str = "dynamo",
    plugins: Plugins | None = None,
    timeout: float = 60.0,
) -> AsyncIterator[InferenceService]:
    """The routing core a frontend process runs, over the workers registered in ``store``.

    Yields once every one of ``models`` is routable (failing after ``timeout`` s); stops the table after.
    """
    from dynamo_triton.runtime.discovery import ModelTable
    from dynamo_triton.runtime.service import RoutingService
    from dynamo_triton.testing.wait import until

    plugins = plugins or make_plugin_manager()
    table = ModelTable(store, namespace)
    service: Any = RoutingService(
        table, plugins.router("round-robin"), lambda name: plugins.transport(name), dtypes=plugins.dtype_table()
    )
    service.repository = None  # model control is the cluster's (tests/runtime/test_model_control.py)
    try:
        await table.start()
        wanted = set(models)
        await until(lambda: {m.name for m in service.models()} >= wanted, timeout, f"{', '.join(models)} routable")
        yield service
    finally:
        await table.stop()


@contextlib.asynccontextmanager
async def local_worker_service(
    model_repository: str,
    models: Sequence[str] = ("identity",),
    *,
    backend: str = "triton",
    plugins: Plugins | None = None,
) -> AsyncIterator[InferenceService]:
    """A worker serving ``models`` with the ``backend`` plugin in this process (``mem`` store, ``inproc``
    transport) and :func:`routing_service` over it. Stops the worker (drained) after."""
    from dynamo_triton.runtime.worker import Worker, WorkerSettings

    plugins = plugins or make_plugin_manager()
    store = plugins.kv_store("mem", space=f"local-worker-{uuid.uuid4().hex}")
    engine = plugins.backend(backend, BackendSettings(model_repository=model_repository))
    settings = WorkerSettings(models=tuple(models))
    worker = Worker(engine, store, plugins.transport("inproc"), settings, dtypes=plugins.dtype_table())
    try:
        await worker.start()
        async with routing_service(store, models, plugins=plugins) as service:
            yield service
    finally:
        await worker.stop()
        await store.close()
