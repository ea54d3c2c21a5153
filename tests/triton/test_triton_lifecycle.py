"""Triton server lifecycle against real Triton: broken configs, missing backends, stopping mid-flight.

Triton keeps process-wide state, so each scenario runs a fresh embedded server in its
own Python process (as a worker does); the hard subprocess timeout also proves nothing hangs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

MODEL_REPO = Path(__file__).resolve().parents[2] / "model_repo"

PRELUDE = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from tritonclient.grpc import service_pb2
    from dynamo_triton.backend import BackendSettings
    from dynamo_triton.errors import DyntritonError
    from dyntriton_backend_triton.backend import TritonBackend

    async def started(repo):
        backend = TritonBackend(BackendSettings(model_repository=repo))
        await backend.start()
        return backend

    async def load_error(repo, name):
        backend = await started(repo)
        try:
            await backend.load_model(name)
            result = {"error": None}
        except DyntritonError as exc:
            result = {"error": exc.message, "status": exc.status}
        result["identity_loads"] = (await backend.load_model("identity")).name == "identity"
        await backend.stop()
        return result
    """
)


def run(script: str, *args: str, timeout: float = 90) -> dict:
    """Run PRELUDE + script in a fresh interpreter; it prints one JSON line as its last output."""
    completed = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def repository_with(tmp_path: Path, name: str, config: str) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(MODEL_REPO / "identity", repo / "identity")
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    return repo


def test_a_config_syntax_error_surfaces_tritons_parse_message(tmp_path: Path, require_triton: None) -> None:
    repo = repository_with(tmp_path, "broken", 'name: "broken"\nbackend: "python"\ninput [ { name: "X" data_type: ')
    result = run("print(json.dumps(asyncio.run(load_error(sys.argv[1], 'broken'))))", str(repo))
    assert "failed to load model 'broken'" in result["error"]
    assert "config.pbtxt does not parse" in result["error"] and "3:" in result["error"]
    assert result["identity_loads"], "other models still load"


def test_a_missing_backend_is_named_with_the_folders_searched(tmp_path: Path, require_triton: None) -> None:
    repo = repository_with(tmp_path, "nobackend", 'name: "nobackend"\nbackend: "no_such_backend"\nmax_batch_size: 0\n')
    result = run("print(json.dumps(asyncio.run(load_error(sys.argv[1], 'nobackend'))))", str(repo))
    assert "no_such_backend" in result["error"]
    assert "backends are searched in" in result["error"] and "python" in result["error"]


def test_stopping_with_requests_in_flight_ends_them_with_an_error(require_triton: None) -> None:
    script = """
    async def main(repo):
        backend = await started(repo)
        await backend.load_model("delay")
        message = service_pb2.ModelInferRequest(model_name="delay")
        for name, datatype, array in (("INPUT0", "INT32", np.ones(2, np.int32)),
                                      ("DELAY_MS", "UINT32", np.array([3000], np.uint32))):
            message.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
            message.raw_input_contents.append(array.tobytes())

        async def call():
            try:
                return [r async for r in backend.infer(message)] and "answered"
            except DyntritonError as exc:
                return "error: " + exc.message

        pending = [asyncio.ensure_future(call()) for _ in range(3)]
        deadline = asyncio.get_running_loop().time() + 10
        while backend.server.in_flight < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # poll until the three requests are in Triton
        await asyncio.wait_for(backend.stop(), 30)
        return await asyncio.wait_for(asyncio.gather(*pending), 15)

    print(json.dumps(asyncio.run(main(sys.argv[1]))))
    """
    outcomes = run(script, str(MODEL_REPO))
    assert len(outcomes) == 3
    assert any(outcome.startswith("error:") for outcome in outcomes), outcomes


def test_doctor_reports_the_triton_it_embeds_and_which_callbacks_run(require_triton: None) -> None:
    from dyntriton_backend_triton.completions import built_library

    done = subprocess.run(
        [sys.executable, "-m", "dynamo_triton", "doctor", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["version"] == "2.51.0" and report["python_backend"] == "usable", report
    library = built_library()
    expected = f"C ({library})" if library else "Python (ctypes, slower)"
    assert report["callbacks"].startswith(expected), report["callbacks"]
