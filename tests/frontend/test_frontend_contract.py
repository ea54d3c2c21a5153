"""The shipped frontends (``kserve-grpc``, ``http``) pass the Frontend contract, over the contract's service
double and, once each, over a real worker: one ``dyntriton worker`` process for the module (the embedded
Triton backend on model_repo/'s identity, the file store, the tcp transport) and the routing core over it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynamo_triton.frontend import Frontend, FrontendSettings, InferenceService
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster
from dynamo_triton.testing.frontend_contract import Capability, FrontendContract
from dynamo_triton.testing.frontend_protocols import KServeGrpcClient, KServeRestClient
from dynamo_triton.testing.services import routing_service

Factory = Callable[[FrontendSettings, InferenceService], Frontend]


def _factory(name: str) -> Factory:
    plugins = make_plugin_manager()
    return lambda settings, service: plugins.frontend(name, settings, service)


class TestKServeGrpc(FrontendContract):
    """Every part applies."""

    @pytest.fixture
    def frontend_factory(self) -> Factory:
        return _factory("kserve-grpc")

    @pytest.fixture
    def protocol(self) -> Callable[[int], Any]:
        return KServeGrpcClient


class TestHttp(FrontendContract):
    """KServe v2 REST streams no tensor responses (its generate_stream: tests/frontend/test_frontend_http_rest.py)."""

    capabilities = frozenset(Capability) - {Capability.STREAMING}

    @pytest.fixture
    def frontend_factory(self) -> Factory:
        return _factory("http")

    @pytest.fixture
    def protocol(self) -> Callable[[int], Any]:
        return KServeRestClient


@pytest.fixture(scope="module")
def worker_store(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[str]:
    """A ``dyntriton worker`` serving identity for the whole module; yields its file store's root."""
    tmp = tmp_path_factory.mktemp("contract-worker")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv")}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    try:
        cluster.worker("identity")
        yield str(tmp / "kv")
    finally:
        cluster.stop()


@pytest.fixture
async def real_service(worker_store: str) -> AsyncIterator[InferenceService]:
    plugins = make_plugin_manager()
    store = plugins.kv_store("file", root=worker_store)
    try:
        async with routing_service(store, ("identity",), plugins=plugins, timeout=START_TIMEOUT) as service:
            yield service
    finally:
        await store.close()


class TestKServeGrpcOverARealWorker(TestKServeGrpc):
    """The same suite over a real worker stack: tests needing the double's extras skip."""

    @pytest.fixture
    def service(self, real_service: InferenceService) -> InferenceService:
        return real_service


class TestHttpOverARealWorker(TestHttp):
    @pytest.fixture
    def service(self, real_service: InferenceService) -> InferenceService:
        return real_service


# -- a third party's frontend: the kserve-v1 example runs the parts of the contract its protocol has --
V1_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dyntriton-frontend-kserve-v1"


class KServeV1Client(KServeRestClient):
    """KServe V1 REST: ``GET /v1/models/{name}``, ``POST /v1/models/{name}:predict`` (instances in, predictions out)."""

    async def model_ready(self, model: str) -> bool:
        status, payload = await self._send("GET", f"/v1/models/{model}")
        return status == 200 and bool(payload.get("ready"))

    async def infer(self, model: str, data: np.ndarray, *, request_id: str = "") -> np.ndarray:
        answer = await self._ok("POST", f"/v1/models/{model}:predict", {"instances": data.tolist()})
        return np.array(answer["predictions"], dtype=np.int32)

    async def live(self) -> bool:
        raise NotImplementedError("KServe V1 has no server health endpoint")

    ready = live


class TestKServeV1Example(FrontendContract):
    """V1 has no server health, no metadata and no streaming: those parts skip, the rest must pass."""

    capabilities = frozenset(Capability) - {Capability.HEALTH, Capability.METADATA, Capability.STREAMING}

    @pytest.fixture
    def frontend_factory(self, monkeypatch: pytest.MonkeyPatch) -> Factory:
        monkeypatch.syspath_prepend(str(V1_EXAMPLE))
        import dyntriton_frontend_kserve_v1

        plugins = make_plugin_manager(entry_points=False, plugins=[("kserve-v1", dyntriton_frontend_kserve_v1)])
        return lambda settings, service: plugins.frontend("kserve-v1", settings, service)

    @pytest.fixture
    def protocol(self) -> Callable[[int], Any]:
        return KServeV1Client
