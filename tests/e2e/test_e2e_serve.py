"""End to end through `dyntriton serve` with each store, every model, streaming, deadlines, cancellation.

The tests that need every model share one `serve` (file store) per module; tests wait on events.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, http_get, model_ready, wait_until, worker_requests

pytestmark = pytest.mark.slow

ALL_MODELS = ("identity", "identity_multi", "repeat", "add_sub", "delay", "simple_sequence")


def tensor(name: str, datatype: str, array: np.ndarray) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def serve(cluster: Cluster, *models: str, extra: tuple[str, ...] = ()) -> str:
    proc, url = cluster.serve(*models, extra=extra)
    for model in models:
        wait_until(lambda m=model: model_ready(url, m), START_TIMEOUT, f"{model} to be ready", cluster)
    assert proc.alive()
    return url


@pytest.fixture(scope="module")
def every_model(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[Cluster, str]]:
    """One `serve` (file store, one worker process) of every model, shared by the module."""
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    try:
        yield cluster, serve(cluster, *ALL_MODELS)
    finally:
        cluster.stop()


def check_identity(url: str) -> None:
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(10, dtype=np.int32).reshape(2, 5)
    result = client.infer("identity", [tensor("INPUT0", "INT32", data)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    client.close()


def test_serve_with_the_mem_store_runs_in_one_process(cluster: Cluster) -> None:
    cluster.store = "mem"
    url = serve(cluster, "identity")
    check_identity(url)
    proc = cluster.procs[0]
    assert proc.stop(signal.SIGINT) == 0, proc.output()[-2000:]
    assert "in-process worker" in proc.output()


def test_serve_with_etcd(cluster: Cluster, etcd_server: str) -> None:
    cluster.store = "etcd"
    cluster.env["ETCD_ENDPOINTS"] = etcd_server
    url = serve(cluster, "identity")
    check_identity(url)
    # `dyntriton infer` as the README shows it: metadata, random input, verified identity answer.
    command = ["infer", "--url", url, "--model", "identity", "--shape", "1", "5", "--json"]
    infer = subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert infer.returncode == 0, infer.stderr
    summary = json.loads(infer.stdout)
    assert summary["verified"] is True and summary["outputs"]["OUTPUT0"]["shape"] == [1, 5]
    assert cluster.procs[0].stop() == 0


def test_every_model_in_the_repository_through_tritonclient(every_model: tuple[Cluster, str]) -> None:
    _, url = every_model
    client = grpcclient.InferenceServerClient(url)
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {model["name"] for model in index if model.get("state") == "READY"} == set(ALL_MODELS)
    assert {model["name"] for model in index} >= set(ALL_MODELS)  # as Triton: the repository's others too
    config = client.get_model_config("add_sub", as_json=True)["config"]
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config

    rng = np.random.default_rng(3)
    arrays = {
        "FP32": rng.standard_normal(4).astype(np.float32),
        "FP16": rng.standard_normal(4).astype(np.float16),
        "INT64": rng.integers(-(2**40), 2**40, 4),
        "BOOL": rng.integers(0, 2, 4).astype(bool),
        "BYTES": np.array([b"a", b"", b"\x00\xff", b"long" * 50], dtype=object),
    }
    bf16 = rng.standard_normal(4).astype(ml_dtypes.bfloat16)
    inputs = [tensor(f"{name}_IN", name, array) for name, array in arrays.items()]
    bf16_input = grpcclient.InferInput("BF16_IN", [4], "BF16")
    bf16_input._raw_content = bf16.tobytes()  # tritonclient has no numpy bfloat16: send the raw bytes
    bf16_input._input.ClearField("contents")
    inputs.append(bf16_input)
    result = client.infer("identity_multi", inputs)
    for name, array in arrays.items():
        got = result.as_numpy(f"{name}_OUT")
        assert got.shape == array.shape
        assert got.tolist() == array.tolist()
    raw_bf16 = result.get_response().raw_output_contents[
        [o.name for o in result.get_response().outputs].index("BF16_OUT")
    ]
    assert raw_bf16 == bf16.tobytes()

    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("add_sub", [tensor("INPUT0", "FP32", a), tensor("INPUT1", "FP32", a)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a * 0)

    stats = client.get_inference_statistics("add_sub", as_json=True)
    assert int(stats["model_stats"][0]["inference_count"]) >= 2

    with pytest.raises(InferenceServerException) as info:  # as Triton without explicit model control
        client.load_model("identity")
    assert "UNAVAILABLE" in str(info.value.status())
    assert "--model-control explicit" in str(info.value.message())


def test_decoupled_model_streams_over_model_stream_infer(every_model: tuple[Cluster, str]) -> None:
    _, url = every_model
    client = grpcclient.InferenceServerClient(url)
    results: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error or result))
    values = np.array([4, 5, 6], dtype=np.int32)
    client.async_stream_infer("repeat", [tensor("IN", "INT32", values)], request_id="r1")
    got = [results.get(timeout=30) for _ in range(3)]
    assert [int(r.as_numpy("OUT")[0]) for r in got] == [4, 5, 6]
    # A bad request answers in-stream and the stream stays usable.
    client.async_stream_infer("repeat", [tensor("IN", "FP32", values.astype(np.float32))], request_id="bad")
    error = results.get(timeout=30)
    assert isinstance(error, InferenceServerException) and "FP32" in str(error)
    client.async_stream_infer("repeat", [tensor("IN", "INT32", values[:1])], request_id="r2")
    assert int(results.get(timeout=30).as_numpy("OUT")[0]) == 4
    client.stop_stream()
    with pytest.raises(InferenceServerException, match="ModelStreamInfer"):
        client.infer("repeat", [tensor("IN", "INT32", values)])


def test_deadline_and_cancellation_reach_the_worker(every_model: tuple[Cluster, str]) -> None:
    cluster, url = every_model
    client = grpcclient.InferenceServerClient(url)
    slow = [
        tensor("INPUT0", "INT32", np.arange(3, dtype=np.int32)),
        tensor("DELAY_MS", "UINT32", np.array([3000], np.uint32)),
    ]
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        client.infer("delay", slow, client_timeout=0.5)
    assert "DEADLINE_EXCEEDED" in str(info.value.status())
    assert time.monotonic() - started < 2.5

    system_port = int(cluster.procs[0].argv[cluster.procs[0].argv.index("--system-port") + 1])
    received = worker_requests(system_port, "delay")
    outcome: queue.Queue[object] = queue.Queue()
    future = client.async_infer("delay", slow, callback=lambda result, error: outcome.put(error or result))
    wait_until(lambda: worker_requests(system_port, "delay") > received, 10, "the request to reach the worker", cluster)
    future.cancel()
    assert "CANCELLED" in str(outcome.get(timeout=10))

    def cancelled_on_the_worker() -> bool:
        text = http_get(system_port, "/metrics")[1]
        return 'dyntriton_worker_request_failures_total{model="delay",status="CANCELLED"}' in text

    wait_until(cancelled_on_the_worker, 10, "the worker to see the cancellation", cluster)


def test_frontend_started_after_the_workers_finds_them(cluster: Cluster) -> None:
    _, port = cluster.worker("identity")
    wait_until(lambda: http_get(port, "/health")[0] == 200, START_TIMEOUT, "worker registered", cluster)
    _, url, http_port = cluster.frontend()
    wait_until(lambda: model_ready(url, "identity"), 30, "frontend to discover the worker", cluster)
    check_identity(url)
    status, body = http_get(http_port, "/health")
    assert status == 200 and '"identity"' in body
    status, metrics = http_get(http_port, "/metrics")
    assert 'dyntriton_frontend_requests_total{model="identity",protocol="grpc"} 1.0' in metrics
