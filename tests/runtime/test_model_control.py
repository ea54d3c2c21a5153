"""Cluster model control over the ``mem`` store: workers' ModelControllers and a frontend's ClusterRepository.

Real Workers (``inproc`` transport) and a real routing table; the backend is a small one with a
repository of three models (``a``, ``b``, ``broken``) that records what it was asked to load. The
embedded Triton path is covered end to end in tests/e2e/test_e2e_model_control.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.backend import ModelInfo
from dynamo_triton.errors import DyntritonError, ModelNotFoundError, TritonError
from dynamo_triton.kv import KVStore
from dynamo_triton.plugins import Plugins, make_plugin_manager
from dynamo_triton.runtime.cluster_repository import ClusterRepository
from dynamo_triton.runtime.control_records import ControlRecord, RepositoryReport, control_key, report_key
from dynamo_triton.runtime.discovery import ModelTable
from dynamo_triton.runtime.model_control import ModelController
from dynamo_triton.runtime.worker import Worker, WorkerSettings
from dynamo_triton.testing.wait import until

BROKEN = "failed to load model 'broken': config.pbtxt does not parse: 5:1 : Expected identifier"


class RepoBackend:
    """A repository of ``a``, ``b`` and ``broken``; a ``config`` override sets max_batch_size from its JSON."""

    def __init__(self, names: tuple[str, ...] = ("a", "b", "broken")) -> None:
        self.names = list(names)
        self.loaded: dict[str, ModelInfo] = {}
        self.loads: list[tuple[str, str | None, dict[str, bytes]]] = []
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        pass

    async def stop(self, *, timeout: float = 30.0) -> None:
        pass

    async def repository_index(self) -> list[str]:
        return sorted(self.names)

    async def load_model(
        self, name: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> ModelInfo:
        self.loads.append((name, config, dict(files or {})))
        if self.gate is not None:
            await self.gate.wait()
        if name == "broken":
            raise TritonError("INTERNAL", BROKEN)
        if name not in self.names and not files:
            raise ModelNotFoundError(f"model '{name}' is not in the model repository")
        model_config = model_config_pb2.ModelConfig(name=name, max_batch_size=8)
        if config is not None:
            model_config.max_batch_size = json.loads(config).get("max_batch_size", 8)
        info = ModelInfo(name, "1", model_config, service_pb2.ModelMetadataResponse(name=name, versions=["1"]))
        self.loaded[name] = info
        return info

    async def unload_model(self, name: str) -> None:
        if self.loaded.pop(name, None) is None:
            raise ModelNotFoundError(f"model '{name}' is not loaded")

    def model(self, name: str) -> ModelInfo:
        return self.loaded[name]

    def server_identity(self) -> tuple[str, str]:
        return ("triton", "2.51.0")

    async def ready(self) -> bool:
        return True

    async def infer(self, request: service_pb2.ModelInferRequest) -> AsyncIterator[service_pb2.ModelInferResponse]:
        yield service_pb2.ModelInferResponse(model_name=request.model_name)

    async def infer_serialized(self, request: service_pb2.ModelInferRequest, raw_inputs: Any = None) -> Any:
        yield service_pb2.ModelInferResponse(model_name=request.model_name).SerializeToString()

    async def statistics(self, name: str = "") -> Any:
        return service_pb2.ModelStatisticsResponse()


class Cluster:
    """Workers and one frontend-side repository sharing one ``mem`` store."""

    def __init__(self, plugins: Plugins, store: KVStore) -> None:
        self.plugins, self.store = plugins, store
        self.table = ModelTable(store, "dynamo")
        self.repository = ClusterRepository(store, "dynamo", self.table, default_timeout=10.0)
        self.workers: list[tuple[Worker, ModelController]] = []

    async def worker(
        self, backend: RepoBackend, *, explicit: bool = True, models: tuple[str, ...] = ()
    ) -> tuple[Worker, ModelController]:
        settings = WorkerSettings(models=models, lease_ttl=5.0, model_control="explicit" if explicit else "none")
        worker = Worker(backend, self.store, self.plugins.transport("inproc"), settings)
        await worker.start()
        control = ModelController(worker, explicit=explicit)
        await control.start()
        self.workers.append((worker, control))
        return worker, control

    async def stop(self) -> None:
        for worker, control in self.workers:
            await control.stop()
            await worker.stop()
        await self.table.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    plugins = make_plugin_manager(env={})
    store = plugins.kv_store("mem", space=f"model-control-{uuid.uuid4().hex}")
    cluster = Cluster(plugins, store)
    await cluster.table.start()
    try:
        yield cluster
    finally:
        await cluster.stop()
        await store.close()


async def states(cluster: Cluster) -> dict[str, tuple[str, str]]:
    return {entry.name: (entry.state, entry.reason) for entry in await cluster.repository.index()}


async def test_an_explicit_worker_starts_with_nothing_loaded_and_reports_its_repository(cluster: Cluster) -> None:
    worker, _ = await cluster.worker(RepoBackend())
    assert worker.models == {}
    assert await states(cluster) == {"a": ("", ""), "b": ("", ""), "broken": ("", "")}
    assert await cluster.repository.index(ready=True) == []


async def test_load_answers_once_the_card_is_in_the_routing_table(cluster: Cluster) -> None:
    await cluster.worker(RepoBackend())
    await cluster.repository.load("a")
    assert cluster.table.model_names() == ["a"]
    assert (await states(cluster))["a"] == ("READY", "")


async def test_a_config_override_reaches_the_backend_and_the_card_shows_it(cluster: Cluster) -> None:
    backend = RepoBackend()
    await cluster.worker(backend, models=("a",))
    await until(lambda: cluster.table.instances("a"), 5.0, "a's card")
    assert cluster.table.instances("a")[0].config.max_batch_size == 8
    await cluster.repository.load("a", config=json.dumps({"name": "a", "max_batch_size": 16}))
    assert backend.loads[-1][1] is not None
    [instance] = cluster.table.instances("a")
    assert instance.config.max_batch_size == 16  # no waiting: load answered after the table saw the new card


async def test_a_failed_load_answers_with_the_backends_reason_and_the_index_keeps_it(cluster: Cluster) -> None:
    await cluster.worker(RepoBackend())
    with pytest.raises(DyntritonError) as failed:
        await cluster.repository.load("broken")
    assert failed.value.message == BROKEN and failed.value.status == "INTERNAL"
    assert (await states(cluster))["broken"] == ("UNAVAILABLE", BROKEN)


async def test_one_worker_that_loads_is_enough_and_errors_of_all_are_one_message_when_they_agree(
    cluster: Cluster,
) -> None:
    await cluster.worker(RepoBackend(("a",)))
    await cluster.worker(RepoBackend(("a", "broken")))
    await cluster.worker(RepoBackend(("broken",)))
    await cluster.repository.load("a")
    assert len(cluster.table.instances("a")) >= 1
    with pytest.raises(DyntritonError) as failed:
        await cluster.repository.load("broken")
    assert failed.value.message == f"{BROKEN} (on 2 workers)"


async def test_unload_withdraws_every_card_before_answering(cluster: Cluster) -> None:
    first, _ = await cluster.worker(RepoBackend(), models=("a",))
    second, _ = await cluster.worker(RepoBackend(), models=("a",))
    await until(lambda: len(cluster.table.instances("a")) == 2, 5.0, "both cards of a")
    await cluster.repository.unload("a")
    assert cluster.table.instances("a") == []
    assert first.models == {} and second.models == {}
    assert (await states(cluster))["a"] == ("UNAVAILABLE", "unloaded")
    await cluster.repository.unload("a")  # unloading what is not loaded does nothing, as Triton


@pytest.mark.parametrize(
    ("name", "config", "files", "says"),
    [
        ("nope", None, {}, "no model repository of the workers has it; they have: a, b, broken"),
        ("a", "{not json", {}, "Invalid config override: the 'config' parameter is not JSON"),
        ("a", "[1]", {}, "must be a JSON object"),
        ("a", None, {"1/model.py": b"x"}, "Load parameter 'config' must be specified for model file override"),
        ("a", "{}", {"1/" + "x" * 256: b"x"}, "longer than NAME_MAX (255)"),
        ("a", "{}", {"../../etc/passwd": b"x"}, "must stay within the model directory"),
        ("a", "{}", {"/etc/passwd": b"x"}, "must be relative"),
        ("../a", None, {}, "path traversal"),
    ],
)
async def test_bad_load_requests_are_invalid_argument_and_reach_no_worker(
    cluster: Cluster, name: str, config: str | None, files: dict[str, bytes], says: str
) -> None:
    backend = RepoBackend()
    await cluster.worker(backend)
    with pytest.raises(DyntritonError) as refused:
        await cluster.repository.load(name, config=config, files=files)
    assert refused.value.status == "INVALID_ARGUMENT"
    assert says in refused.value.message
    assert await cluster.store.list("dyntriton/v1/dynamo/control/") == []
    assert backend.loads == []


async def test_without_an_explicit_worker_load_is_unavailable_as_in_triton_without_model_control(
    cluster: Cluster,
) -> None:
    await cluster.worker(RepoBackend(("a", "b")), explicit=False)  # serves its whole repository
    assert await states(cluster) == {"a": ("READY", ""), "b": ("READY", "")}
    with pytest.raises(DyntritonError) as refused:
        await cluster.repository.load("a")
    assert refused.value.status == "UNAVAILABLE" and "--model-control explicit" in refused.value.message


async def test_a_worker_started_later_loads_what_the_cluster_loaded_but_not_what_it_unloaded(cluster: Cluster) -> None:
    await cluster.worker(RepoBackend())
    await cluster.repository.load("a", config=json.dumps({"max_batch_size": 4}))
    await cluster.repository.load("b")
    await cluster.repository.unload("b")
    late = RepoBackend()
    worker, control = await cluster.worker(late)
    await until(lambda: "a" in worker.models, 5.0, "the late worker to catch up")
    assert [(name, config) for name, config, _ in late.loads] == [("a", json.dumps({"max_batch_size": 4}))]
    assert control.entries["a"].state == "READY"


async def test_files_bring_their_own_model_to_every_explicit_worker(cluster: Cluster) -> None:
    backend = RepoBackend()
    await cluster.worker(backend)
    await cluster.repository.load("fresh", config="{}", files={"1/model.py": b"print()"})
    assert backend.loads[-1] == ("fresh", "{}", {"1/model.py": b"print()"})
    assert (await states(cluster))["fresh"] == ("READY", "")
    await cluster.repository.unload("fresh")
    assert cluster.table.instances("fresh") == []


async def test_a_load_past_its_deadline_says_which_workers_it_waited_for(cluster: Cluster) -> None:
    backend = RepoBackend()
    backend.gate = asyncio.Event()
    worker, _ = await cluster.worker(backend)
    with pytest.raises(DyntritonError) as late:
        await cluster.repository.load("a", timeout=0.3)
    assert late.value.status == "DEADLINE_EXCEEDED" and worker.instance_id in late.value.message
    assert (await states(cluster))["a"][0] == "LOADING"
    backend.gate.set()  # the worker goes on with it

    async def ready() -> bool:
        return (await states(cluster))["a"][0] == "READY"

    await until(ready, 5.0, "a to be READY")


async def test_a_worker_that_dies_while_loading_fails_the_request_instead_of_hanging(cluster: Cluster) -> None:
    backend = RepoBackend()
    backend.gate = asyncio.Event()
    _, control = await cluster.worker(backend)
    load = asyncio.create_task(cluster.repository.load("a"))
    await until(lambda: backend.loads, 5.0, "the load to reach the backend")
    await control.stop()  # its report goes with its lease
    with pytest.raises(DyntritonError) as failed:
        await load
    assert failed.value.status == "UNAVAILABLE" and "left before it answered" in failed.value.message


async def test_records_and_reports_round_trip() -> None:
    record = ControlRecord(model="m", action="load", config="{}", files={"1/x": b"\x00\xff"})
    assert ControlRecord.from_json(record.to_json()) == record
    assert control_key("ns", "m") == "dyntriton/v1/ns/control/m"
    assert report_key("ns", "i") == "dyntriton/v1/ns/repository/i"
    with pytest.raises(DyntritonError):
        RepositoryReport.from_json(b'{"schema": "other"}')
