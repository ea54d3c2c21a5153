"""Triton server lifecycle against real Triton: broken configs, missing backends, stopping mid-flight."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.backend import BackendSettings
from dynamo_triton.errors import DyntritonError, TritonError

MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"


def repository_with(tmp_path: Path, name: str, config: str) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPO / "identity", repo / "identity")
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    return repo


async def start(repo: Path):
    from dyntriton_backend_triton.backend import TritonBackend

    backend = TritonBackend(BackendSettings(model_repository=str(repo)))
    await backend.start()
    return backend


async def test_a_config_syntax_error_surfaces_tritons_parse_message(tmp_path: Path, require_triton: None) -> None:
    repo = repository_with(tmp_path, "broken", 'name: "broken"\nbackend: "python"\ninput [ { name: "X" data_type: ')
    backend = await start(repo)
    try:
        with pytest.raises(TritonError) as info:
            await backend.load_model("broken")
        assert "failed to load model 'broken'" in info.value.message
        assert "config.pbtxt" in info.value.message or "parse" in info.value.message.lower()
        assert (await backend.load_model("identity")).name == "identity", "other models still load"
    finally:
        await backend.stop()


async def test_a_missing_backend_is_named(tmp_path: Path, require_triton: None) -> None:
    config = 'name: "nobackend"\nbackend: "tensorrt_llm_nonexistent"\nmax_batch_size: 0\n'
    repo = repository_with(tmp_path, "nobackend", config)
    backend = await start(repo)
    try:
        with pytest.raises(TritonError) as info:
            await backend.load_model("nobackend")
        assert "tensorrt_llm_nonexistent" in info.value.message
        assert "backends are searched in" in info.value.message and "python" in info.value.message
    finally:
        await backend.stop()


async def test_stopping_with_requests_in_flight_ends_them_with_an_error(require_triton: None) -> None:
    backend = await start(MODEL_REPO)
    await backend.load_model("delay")
    message = service_pb2.ModelInferRequest(model_name="delay")
    for name, datatype, array in (
        ("INPUT0", "INT32", np.ones(2, np.int32)),
        ("DELAY_MS", "UINT32", np.array([3000], np.uint32)),
    ):
        message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        message.raw_input_contents.append(array.tobytes())

    async def call() -> object:
        try:
            return [r async for r in backend.infer(message)]
        except DyntritonError as exc:
            return exc

    pending = [asyncio.ensure_future(call()) for _ in range(3)]
    await asyncio.sleep(0.3)
    await asyncio.wait_for(backend.stop(), 30)
    results = await asyncio.wait_for(asyncio.gather(*pending), 15)
    assert all(isinstance(result, (DyntritonError, list)) for result in results)
    assert any(isinstance(result, DyntritonError) for result in results), results
