"""The shipped frontends (``kserve-grpc``, ``http``) pass the Frontend contract, over the contract's service
double and, once each, over a real worker (the embedded Triton backend on model_repo/'s identity)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dynamo_triton.frontend import Frontend, FrontendSettings, InferenceService
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.frontend_contract import Capability, FrontendContract
from dynamo_triton.testing.frontend_protocols import KServeGrpcClient, KServeRestClient
from dynamo_triton.testing.services import local_worker_service

MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"

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


@pytest.fixture
async def real_service(require_triton: None) -> AsyncIterator[InferenceService]:
    async with local_worker_service(str(MODEL_REPO), ("identity",)) as service:
        yield service


class TestKServeGrpcOverARealWorker(TestKServeGrpc):
    """The same suite over a real worker stack: tests needing the double's extras skip."""

    @pytest.fixture
    def service(self, real_service: InferenceService) -> InferenceService:
        return real_service


class TestHttpOverARealWorker(TestHttp):
    @pytest.fixture
    def service(self, real_service: InferenceService) -> InferenceService:
        return real_service
