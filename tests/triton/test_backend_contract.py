"""The shipped ``triton`` backend passes the Backend contract, on the real embedded Triton and model_repo/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dynamo_triton.backend import BackendSettings
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.backend_contract import BackendContract

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(require_triton: None) -> AsyncIterator[Any]:
    """The ``triton`` backend, built through the plugin manager as the worker builds it."""
    engine = make_plugin_manager().backend("triton", BackendSettings(model_repository=str(MODEL_REPO)))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


class TestTritonBackend(BackendContract):
    """Every part applies: model_repo/ has identity, repeat (decoupled, with DELAY_MS)."""


async def test_local_worker_service_routes_to_an_in_process_worker(require_triton: None) -> None:
    """dynamo_triton.testing.services.local_worker_service: a real worker stack in this process."""
    import numpy as np
    from tritonclient.grpc import service_pb2

    from dynamo_triton.testing.backend_contract import infer_request
    from dynamo_triton.testing.services import local_worker_service

    data = np.arange(-3, 5, dtype=np.int32).reshape(1, 8)
    async with local_worker_service(str(MODEL_REPO), ("identity",)) as service:
        assert [model.name for model in service.models()] == ["identity"]
        payload = infer_request("identity", {"INPUT0": ("INT32", data)}).SerializeToString()
        [answer] = [
            service_pb2.ModelInferResponse.FromString(chunk) async for chunk in service.infer("identity", payload)
        ]
    assert bytes(answer.raw_output_contents[0]) == data.tobytes()
