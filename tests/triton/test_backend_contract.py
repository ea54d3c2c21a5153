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
