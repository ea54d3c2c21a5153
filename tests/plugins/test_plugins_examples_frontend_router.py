"""Third-party frontends and routers, pip-installed: examples/dyntriton-frontend-kserve-v1 and dyntriton-router-p2c.

Both examples are installed the way pip installs any distribution, into a private ``--target``
folder (offline: no build isolation, no dependencies fetched) put on PYTHONPATH for real
``dyntriton`` processes (``serve``'s workers inherit it). Nothing in dyntriton names them: the
V1 frontend's ``--v1-port`` and the p2c router come from their entry points only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, model_ready, wait_until
from dynamo_triton.testing.ports import free_port

pytestmark = pytest.mark.slow  # pip-installs two distributions and runs real processes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(target)]
    for example in ("dyntriton-frontend-kserve-v1", "dyntriton-router-p2c"):
        installed = subprocess.run([*pip, str(EXAMPLES / example)], capture_output=True, text=True, timeout=300)
        assert installed.returncode == 0, installed.stderr[-2000:]
    return target


def run(args: list[str], site: Path | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PYTHONPATH": str(site)} if site else {})}
    return subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_the_v1_port_shows_in_serve_help_only_when_installed(site: Path) -> None:
    with_it = run(["serve", "--help"], site)
    assert with_it.returncode == 0, with_it.stderr
    assert "--v1-port" in with_it.stdout and "DYN_V1_PORT" in with_it.stdout
    assert "kserve-v1 frontend" in with_it.stdout, "its own panel"
    assert "--p2c-seed" in with_it.stdout
    without = run(["serve", "--help"], None)
    assert "--v1-port" not in without.stdout


def test_plugins_list_shows_the_frontend_and_the_router(site: Path) -> None:
    result = run(["plugins", "list", "--json"], site)
    assert result.returncode == 0, result.stderr
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert records["frontend-kserve-v1"]["provides"] == ["frontend: kserve-v1"]
    assert records["frontend-kserve-v1"]["status"] == "ok" and not records["frontend-kserve-v1"]["builtin"]
    assert records["router-p2c"]["provides"] == ["router: p2c"] and records["router-p2c"]["status"] == "ok"
    assert records["router-basic"]["builtin"] and "router: round-robin" in records["router-basic"]["provides"]


def v1(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(site: Path, tmp_path: Path, require_triton: None) -> Iterator[tuple[Cluster, str, int]]:
    env = {**os.environ, "PYTHONPATH": str(site), "DYN_FILE_KV": str(tmp_path / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp_path, env=env)
    v1_port = free_port()
    extra = ("--frontend", "kserve-grpc", "--frontend", "http", "--frontend", "kserve-v1", "--router", "p2c")
    try:
        proc, url = cluster.serve("identity", extra=(*extra, "--v1-port", str(v1_port)))
        wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
        assert proc.alive()
        yield cluster, url, v1_port
    finally:
        cluster.stop()


def test_serve_answers_v1_and_v2_through_a_third_party_frontend_and_router(served: tuple[Cluster, str, int]) -> None:
    import tritonclient.grpc as grpcclient

    cluster, url, v1_port = served
    assert v1(v1_port, "/v1/models/identity") == (200, {"name": "identity", "ready": True})
    status, answer = v1(v1_port, "/v1/models/identity:predict", {"instances": [[1, 2, 3], [4, 5, 6]]})
    assert (status, answer) == (200, {"predictions": [[1, 2, 3], [4, 5, 6]]}), cluster.logs()

    client = grpcclient.InferenceServerClient(url)
    try:
        data = np.array([[7, 8, 9]], dtype=np.int32)
        given = grpcclient.InferInput("INPUT0", list(data.shape), "INT32")
        given.set_data_from_numpy(data)
        np.testing.assert_array_equal(client.infer("identity", [given]).as_numpy("OUTPUT0"), data)
    finally:
        client.close()

    status, error = v1(v1_port, "/v1/models/nope:predict", {"instances": [[1]]})
    assert status == 404 and "nope" in error["error"], "KServe V1's error shape, with the status"
    status, error = v1(v1_port, "/v1/models/identity:predict", {"rows": [[1]]})
    assert status == 400 and "instances" in error["error"]
    status, error = v1(v1_port, "/v1/models/identity:predict", {"instances": [[1, 2], [3]]})
    assert status == 400 and set(error) == {"error"}
    output = cluster.procs[0].output()
    assert f"KServe V1 127.0.0.1:{v1_port}" in output, "the start line names every frontend"
