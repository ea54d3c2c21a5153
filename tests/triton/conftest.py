"""A real embedded Triton (from the nvidia-pytriton wheel) serving model_repo/, shared by the module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from dynamo_triton.backend import BackendSettings

MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"
MODELS = ("identity", "identity_multi", "repeat", "add_sub", "delay")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(require_triton: None) -> AsyncIterator[object]:
    from dyntriton_backend_triton.backend import TritonBackend

    triton = TritonBackend(BackendSettings(model_repository=str(MODEL_REPO)))
    await triton.start()
    for name in MODELS:
        await triton.load_model(name)
    yield triton
    await triton.stop()
