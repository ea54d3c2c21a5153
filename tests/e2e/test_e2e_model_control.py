"""End to end: cluster model control through the frontend, with two real workers started with
``--model-control explicit`` and stock tritonclient (gRPC and HTTP).

The workers serve a repository of their own: ``identity`` (max_batch_size 8) and ``broken``
(a config.pbtxt that does not parse). They start with nothing loaded; the tests (in file order,
sharing the module's processes) load, reload with a config override, unload, send bad requests,
and check RepositoryIndex along the way. Tests wait on events, never on the clock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.cluster import MODEL_REPO, START_TIMEOUT, Cluster, http_get, model_ready, wait_until

pytestmark = pytest.mark.slow

Shared = tuple[Cluster, str, str]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[Shared]:
    """A frontend and two explicit-control workers over a repository of identity and broken."""
    tmp = tmp_path_factory.mktemp("model-control")
    repo = tmp / "repo"
    shutil.copytree(MODEL_REPO / "identity", repo / "identity", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "broken" / "1").mkdir(parents=True)
    shutil.copy(MODEL_REPO / "identity" / "1" / "model.py", repo / "broken" / "1" / "model.py")
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\ninput [ {\n')
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env, model_repo=repo)
    try:
        _, url, http_port = cluster.frontend()
        ports = [cluster.worker(extra=("--model-control", "explicit"))[1] for _ in range(2)]
        for port in ports:
            wait_until(lambda p=port: http_get(p, "/health")[0] == 200, START_TIMEOUT, f"worker :{port}", cluster)
        wait_until(lambda: len(index(url)) == 2, START_TIMEOUT, "both repositories in the index", cluster)
        yield cluster, url, f"127.0.0.1:{http_port}"
    finally:
        cluster.stop()


def index(url: str, ready: bool = False) -> dict[str, tuple[str, str]]:
    """RepositoryIndex through gRPC: name -> (state, reason) (tritonclient cannot ask ``ready``)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=ready), timeout=30)
    return {m.name: (m.state, m.reason) for m in answer.models}


def echo(url: str, data: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "INT32")
        tensor.set_data_from_numpy(data)
        return client.infer("identity", [tensor]).as_numpy("OUTPUT0")
    finally:
        client.close()


def identity_config(url: str) -> dict[str, object]:
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.get_model_config("identity", as_json=True)["config"]
    finally:
        client.close()


def test_workers_start_with_nothing_loaded_and_the_index_lists_their_repository(shared: Shared) -> None:
    _, url, http = shared
    assert index(url) == {"identity": ("", ""), "broken": ("", "")}  # as Triton: never loaded, no state
    assert not model_ready(url, "identity")
    rest = httpclient.InferenceServerClient(http).get_model_repository_index()
    assert rest == [{"name": "broken"}, {"name": "identity"}]


def test_load_answers_when_the_model_is_ready_and_serving(shared: Shared) -> None:
    _, url, _ = shared
    client = grpcclient.InferenceServerClient(url)
    client.load_model("identity")
    assert client.is_model_ready("identity")  # no wait: load answers once the frontend routes to it
    data = np.arange(6, dtype=np.int32).reshape(1, 6)
    np.testing.assert_array_equal(echo(url, data), data)
    assert index(url)["identity"] == ("READY", "")
    assert identity_config(url)["max_batch_size"] == 8


def test_a_config_override_is_what_model_config_says_after_the_load(shared: Shared) -> None:
    _, url, http = shared
    config = identity_config(url)
    config["max_batch_size"] = 16
    grpcclient.InferenceServerClient(url).load_model("identity", config=json.dumps(config))
    assert identity_config(url)["max_batch_size"] == 16
    assert httpclient.InferenceServerClient(http).get_model_config("identity")["max_batch_size"] == 16
    data = np.arange(4, dtype=np.int32).reshape(1, 4)
    np.testing.assert_array_equal(echo(url, data), data)


def test_unload_over_rest_takes_it_off_every_worker_and_load_over_rest_brings_it_back(shared: Shared) -> None:
    _, url, http = shared
    rest = httpclient.InferenceServerClient(http)
    rest.unload_model("identity")
    assert not rest.is_model_ready("identity")
    assert index(url)["identity"] == ("UNAVAILABLE", "unloaded")
    config = identity_config_from_disk(shared[0].model_repo)
    config["max_batch_size"] = 4
    rest.load_model("identity", config=json.dumps(config))
    assert rest.is_model_ready("identity")
    assert rest.get_model_config("identity")["max_batch_size"] == 4


def identity_config_from_disk(repo: Path) -> dict[str, object]:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse((repo / "identity" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(parsed, preserving_proto_field_name=True)


@pytest.mark.parametrize(
    ("model", "config", "files", "says"),
    [
        ("nope", None, None, "no model repository of the workers has it"),
        ("identity", "{not json", None, "Invalid config override"),
        ("identity", "{}", {"file:1/" + "x" * 256: b"x"}, "NAME_MAX"),  # Triton 2.51 itself dies on this one
        ("identity", "{}", {"file:../../x": b"x"}, "must stay within the model directory"),
    ],
)
def test_bad_load_requests_are_invalid_argument_and_the_cluster_keeps_serving(
    shared: Shared, model: str, config: str | None, files: dict[str, bytes] | None, says: str
) -> None:
    cluster, url, http = shared
    with pytest.raises(InferenceServerException) as grpc_refusal:
        grpcclient.InferenceServerClient(url).load_model(model, config=config, files=files)
    assert grpc_refusal.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert says in grpc_refusal.value.message()
    with pytest.raises(InferenceServerException) as rest_refusal:
        httpclient.InferenceServerClient(http).load_model(model, config=config, files=files)
    assert rest_refusal.value.status() == "400" and says in rest_refusal.value.message()
    assert all(proc.alive() for proc in cluster.procs)
    data = np.arange(3, dtype=np.int32).reshape(1, 3)
    np.testing.assert_array_equal(echo(url, data), data)


def test_a_model_whose_config_is_broken_fails_with_tritons_reason(shared: Shared) -> None:
    _, url, _ = shared
    with pytest.raises(InferenceServerException) as failed:
        grpcclient.InferenceServerClient(url).load_model("broken")
    message = failed.value.message()
    assert "failed to load" in message and "config.pbtxt does not parse" in message, message
    state, reason = index(url)["broken"]
    assert state == "UNAVAILABLE" and "does not parse" in reason
    assert index(url)["identity"][0] == "READY"


def test_unload_drains_it_everywhere(shared: Shared) -> None:
    cluster, url, _ = shared
    client = grpcclient.InferenceServerClient(url)
    client.unload_model("identity")
    assert not client.is_model_ready("identity")
    assert index(url)["identity"] == ("UNAVAILABLE", "unloaded")
    assert index(url, ready=True) == {}
    with pytest.raises(InferenceServerException):
        echo(url, np.zeros((1, 2), dtype=np.int32))
    assert all(proc.alive() for proc in cluster.procs)


def test_file_parameters_load_a_model_no_repository_has(shared: Shared) -> None:
    cluster, url, _ = shared
    config = identity_config_from_disk(cluster.model_repo)
    config["name"] = "fresh"
    code = (cluster.model_repo / "identity" / "1" / "model.py").read_bytes()
    client = grpcclient.InferenceServerClient(url)
    client.load_model("fresh", config=json.dumps(config), files={"file:1/model.py": code})
    tensor = grpcclient.InferInput("INPUT0", [1, 3], "INT32")
    tensor.set_data_from_numpy(np.array([[7, 8, 9]], dtype=np.int32))
    np.testing.assert_array_equal(client.infer("fresh", [tensor]).as_numpy("OUTPUT0"), [[7, 8, 9]])
    assert index(url)["fresh"] == ("READY", "")
    client.unload_model("fresh")
    assert not client.is_model_ready("fresh")


def dyntriton(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dynamo_triton", *args], capture_output=True, text=True, timeout=120)


def test_the_model_command_loads_lists_and_unloads(shared: Shared, tmp_path: Path) -> None:
    _, url, _ = shared
    config = identity_config_from_disk(shared[0].model_repo)
    config["max_batch_size"] = 2
    (tmp_path / "identity.json").write_text(json.dumps(config))
    loaded = dyntriton("model", "load", "identity", "--url", url, "--config-file", str(tmp_path / "identity.json"))
    assert loaded.returncode == 0 and "model 'identity' loaded" in loaded.stdout, loaded.stderr
    assert identity_config(url)["max_batch_size"] == 2
    listed = dyntriton("model", "ls", "--url", url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"name": "identity", "version": "1", "state": "READY"} in json.loads(listed.stdout)
    table = dyntriton("model", "ls", "--url", url)
    assert "broken" in table.stdout and "UNAVAILABLE" in table.stdout
    unknown = dyntriton("model", "load", "nope", "--url", url)
    assert unknown.returncode == 1 and "INVALID_ARGUMENT" in unknown.stderr
    unloaded = dyntriton("model", "unload", "identity", "--url", url)
    assert unloaded.returncode == 0 and not model_ready(url, "identity")
