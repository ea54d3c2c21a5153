"""`serve --model-control explicit`, two `serve` runs on one host that do not mix, and
docs/model-control.md's example (a frontend and two explicit workers on one host) as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dynamo_triton.testing.cluster import MODEL_REPO, START_TIMEOUT, Cluster, http_get, model_ready, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.triton]


@pytest.fixture
def host(tmp_path: Path, require_triton: None) -> Iterator[Cluster]:
    """Processes sharing one host's file store with default options (no namespace given)."""
    env = {**os.environ, "DYN_FILE_KV": str(tmp_path / "kv"), "DYN_LOG": "info"}
    for name in ("DYN_STORE_KV", "DYN_NAMESPACE", "DYN_SYSTEM_PORT"):
        env.pop(name, None)
    cluster = Cluster(tmp_path, env=env)
    try:
        yield cluster
    finally:
        cluster.stop()


def _add_sub(url: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    a, b = np.arange(4, dtype=np.float32).reshape(1, 4), np.ones((1, 4), np.float32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 4], "FP32"), grpcclient.InferInput("INPUT1", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    try:
        return client.infer("add_sub", inputs).as_numpy("OUTPUT0")
    finally:
        client.close()


def test_two_serves_do_not_mix_and_explicit_serve_loads_and_unloads(host: Cluster) -> None:
    explicit, explicit_url = host.serve("identity", extra=("--model-control", "explicit"))
    other, other_url = host.serve("add_sub")
    wait_until(lambda: model_ready(explicit_url, "identity"), START_TIMEOUT, "identity on the first serve", host)
    wait_until(lambda: model_ready(other_url, "add_sub"), START_TIMEOUT, "add_sub on the second serve", host)
    assert "namespace dynamo-serve-" in explicit.output()

    # Each serve answers only its own workers' models, although both share the host's store.
    assert not model_ready(explicit_url, "add_sub")
    assert not model_ready(other_url, "identity")

    client = grpcclient.InferenceServerClient(explicit_url)
    try:
        client.load_model("add_sub")
        assert client.is_model_ready("add_sub")
        np.testing.assert_array_equal(_add_sub(explicit_url), np.arange(4, dtype=np.float32).reshape(1, 4) + 1)
        client.unload_model("add_sub")
        assert not client.is_model_ready("add_sub")
        assert client.is_model_ready("identity")
    finally:
        client.close()
    # What a user is told about the model unloaded on purpose: on `dyntriton infer` and over HTTP.
    said = _dyntriton(host, "infer", "--model", "add_sub", "--url", explicit_url, "--shape", "1", "4")
    assert said.returncode != 0
    assert "unloaded through model control" in said.stderr and "cannot reach" not in said.stderr, said.stderr
    http_port = explicit.argv[explicit.argv.index("--http-port") + 1]
    status, body = http_get(int(http_port), "/v2/models/add_sub")
    assert status == 503 and "load it again" in body and "start a worker" not in body, body
    assert model_ready(other_url, "add_sub"), "the other serve's add_sub is not this serve's to unload"
    assert explicit.alive() and other.alive()


def test_serve_explicit_without_models_starts_empty_and_loads(host: Cluster) -> None:
    proc, url = host.serve(extra=("--model-control", "explicit"))
    wait_until(lambda: "Ctrl-C stops" in proc.output(), START_TIMEOUT, "serve's summary", host)
    assert "model control explicit" in proc.output()
    client = grpcclient.InferenceServerClient(url)
    try:
        assert not client.is_model_ready("identity")
        client.load_model("identity")
        assert client.is_model_ready("identity")
    finally:
        client.close()


def _dyntriton(host: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *args], capture_output=True, text=True, timeout=300, env=host.env
    )


def test_the_model_control_docs_example_runs_on_one_host(host: Cluster, tmp_path: Path) -> None:
    """docs/model-control.md: a frontend, two explicit workers (default system port: the second takes another)."""
    _, url, _ = host.frontend()
    repository = ("--model-repository", str(MODEL_REPO))
    first = host.command("worker", "--model-control", "explicit", *repository)
    second = host.command("worker", "--model-control", "explicit", *repository)
    for worker in (first, second):
        wait_until(lambda w=worker: "serving no model yet" in w.output(), START_TIMEOUT, "an explicit worker", host)
    assert first.alive() and second.alive(), host.logs()

    identity_json = tmp_path / "identity.json"
    identity_json.write_text(
        json.dumps(
            {
                "name": "identity",
                "backend": "python",
                "max_batch_size": 4,
                "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [-1]}],
                "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
            }
        )
    )
    loaded = _dyntriton(host, "model", "load", "identity", "--url", url)
    assert loaded.returncode == 0, loaded.stderr
    reloaded = _dyntriton(host, "model", "load", "identity", "--url", url, "--config", identity_json.read_text())
    assert reloaded.returncode == 0, reloaded.stderr
    client = grpcclient.InferenceServerClient(url)
    try:
        assert client.get_model_config("identity").config.max_batch_size == 4
        assert client.get_model_metadata("identity").name == "identity"
    finally:
        client.close()
    listed = _dyntriton(host, "model", "ls", "--url", url)
    assert listed.returncode == 0 and "identity" in listed.stdout and "READY" in listed.stdout, listed
    unloaded = _dyntriton(host, "model", "unload", "identity", "--url", url)
    assert unloaded.returncode == 0, unloaded.stderr
    assert not model_ready(url, "identity")
