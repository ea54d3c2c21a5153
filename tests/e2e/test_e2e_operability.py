"""Operability through real `dyntriton serve` processes: fail fast and loud, honest summaries and exit codes,
listeners only where asked, Triton's own metrics, clients that follow the configured port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dynamo_triton.testing.cluster import (
    MODEL_REPO,
    START_TIMEOUT,
    Cluster,
    free_port,
    http_get,
    listening_addresses,
    model_ready,
    wait_until,
)

pytestmark = pytest.mark.slow

#: Every model of the checkout's repository: a serve without --model must list them all.
REPOSITORY_MODELS = sorted(p.name for p in MODEL_REPO.iterdir() if (p / "config.pbtxt").exists())


def broken_repository(tmp: Path) -> Path:
    """A repository whose only model raises in ``initialize()`` (a missing weights file)."""
    model = tmp / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    config = (MODEL_REPO / "identity" / "config.pbtxt").read_text().replace('"identity"', '"broken"')
    (model / "config.pbtxt").write_text(config)
    (model / "1" / "model.py").write_text(
        textwrap.dedent(
            """
            class TritonPythonModel:
                def initialize(self, args):
                    raise RuntimeError("weights file missing: /nowhere/weights.bin")

                def execute(self, requests):
                    return []
            """
        )
    )
    return tmp / "repo"


def summary_shown(proc: object) -> bool:
    return "Ctrl-C stops" in proc.output()  # type: ignore[attr-defined]


def identity(url: str) -> None:
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(6, dtype=np.int32).reshape(1, 6)
    tensor = grpcclient.InferInput("INPUT0", [1, 6], "INT32")
    tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"), data)
    client.close()


def test_a_model_that_fails_to_load_stops_serve_fast_with_its_reason(cluster: Cluster, tmp_path: Path) -> None:
    repo = broken_repository(tmp_path)
    proc = cluster.command(
        "serve",
        *("--model-repository", str(repo), "--grpc-port", "0", "--http-port", "0", "--system-port", "0"),
    )
    started = time.monotonic()
    assert proc.popen is not None
    code = proc.popen.wait(60)
    elapsed = time.monotonic() - started
    output = proc.output()
    assert code == 3, output  # could not start
    assert elapsed < 20, f"serve took {elapsed:.1f} s to fail\n{output}"
    assert "failed to load model 'broken'" in output and "weights file missing" in output
    assert output.count("Error: failed to load model") == 1, output  # Triton did not retry the load
    assert "doctor" not in output, "the doctor hint does not apply to a broken model"
    assert "CudaDriverHelper" not in output


def test_summary_lists_every_model_with_the_file_store_and_sigkill_of_the_worker_exits_4(cluster: Cluster) -> None:
    cluster.env["COLUMNS"] = "80"  # DYN_FILE_KV already points the file store at this test's folder
    proc = cluster.command(
        "serve",
        *("--grpc-port", str(free_port()), "--http-port", "0", "--system-port", "0", "--lease-ttl", "2"),
        *("--restart", "no"),  # restarts are tests/fault/test_fault_supervision.py's
    )
    wait_until(lambda: summary_shown(proc), START_TIMEOUT, "the serve summary", cluster)
    summary = proc.output().split("dyntriton is serving", 1)[1]
    for model in REPOSITORY_MODELS:
        assert f" {model} " in summary, f"{model} missing from the summary\n{summary}"
    assert "0.0.0.0" not in summary

    # Nothing listens on every interface unless asked: gRPC, HTTP, the worker's system port and transport.
    assert proc.popen is not None
    listening = listening_addresses(proc.popen.pid)
    assert len(listening) >= 4, listening
    assert {host for host, _ in listening} <= {"127.0.0.1", "::1"}, listening

    # SIGKILL of the only worker: serve does not carry on as if nothing happened, nor exit 0.
    worker_pids = sorted(pid for pid in _children(proc.popen.pid) if _is_worker(pid))
    assert len(worker_pids) == 1, worker_pids
    os.kill(worker_pids[0], signal.SIGKILL)
    code = proc.popen.wait(60)
    assert code == 4, proc.output()[-3000:]
    assert "was killed by SIGKILL" in proc.output()


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(item) for item in children.read_text().split()] if children.exists() else []


def _is_worker(pid: int) -> bool:
    try:
        return b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


@pytest.fixture(scope="module")
def mem_serve(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> object:
    """One in-process `serve --store-kv mem` (every model, 80 columns) shared by the tests below."""
    tmp = tmp_path_factory.mktemp("mem-serve")
    env = {**os.environ, "DYN_LOG": "info", "COLUMNS": "80"}
    cluster = Cluster(tmp, store="mem", env=env)
    grpc_port, http_port, system_port = free_port(), free_port(), free_port()
    proc = cluster.command(
        "serve",
        *("--store-kv", "mem", "--grpc-port", str(grpc_port), "--http-port", str(http_port)),
        *("--system-port", str(system_port)),
    )
    try:
        wait_until(lambda: summary_shown(proc), START_TIMEOUT, "the serve summary", cluster)
        yield {
            "cluster": cluster,
            "proc": proc,
            "url": f"127.0.0.1:{grpc_port}",
            "grpc_port": grpc_port,
            "http_port": http_port,
            "system_port": system_port,
        }
    finally:
        cluster.stop()


def test_the_mem_summary_lists_every_model_and_fits_80_columns(mem_serve: dict) -> None:
    output = mem_serve["proc"].output()
    summary = output.split("dyntriton is serving", 1)[1]
    for model in REPOSITORY_MODELS:
        assert f" {model} " in summary, f"{model} missing from the summary\n{summary}"
    table = [line for line in summary.splitlines() if line.startswith(("│", "┃", "┏", "└"))]
    assert table and all(len(line) <= 80 for line in table), "\n".join(table)
    assert "INPUT0 INT32[-1,-1]" in summary, "a tensor's name and type stay on one line"
    assert f"KServe gRPC 127.0.0.1:{mem_serve['grpc_port']}" in output
    assert output.count("CudaDriverHelper") == 0


def test_infer_follows_dyn_grpc_port_and_names_the_address_it_could_not_reach(mem_serve: dict) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DYN_GRPC_URL"}
    command = [sys.executable, "-m", "dynamo_triton", "infer", "--model", "identity", "--shape", "1", "5", "--json"]
    ok = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**env, "DYN_GRPC_PORT": str(mem_serve["grpc_port"])}
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verified"] is True

    closed = free_port()
    refused = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**env, "DYN_GRPC_PORT": str(closed)}
    )
    assert refused.returncode == 1
    assert f"localhost:{closed}" in refused.stderr and "DYN_GRPC_PORT" in refused.stderr
    assert "--url" in refused.stderr  # the hint says which option sets the address

    client = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "examples" / "client.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "DYN_GRPC_PORT": str(mem_serve["grpc_port"])},
    )
    assert client.returncode == 0, client.stderr


def test_worker_metrics_carry_tritons_own_and_the_frontend_sums_queue_and_compute_time(mem_serve: dict) -> None:
    assert model_ready(mem_serve["url"], "identity")
    identity(mem_serve["url"])
    status, text = http_get(mem_serve["system_port"], "/metrics")
    assert status == 200
    assert 'nv_inference_request_success{model="identity",version="1"}' in text
    assert "nv_inference_queue_duration_us" in text and "nv_inference_compute_infer_duration_us" in text
    assert "dyntriton_worker_requests_total" in text  # ours, next to Triton's

    def frontend_sums() -> bool:
        metrics = http_get(mem_serve["http_port"], "/metrics")[1]
        return any(
            line.startswith('dyntriton_model_compute_infer_duration_us_total{model="identity"')
            and float(line.rsplit(" ", 1)[1]) > 0
            for line in metrics.splitlines()
        )

    wait_until(frontend_sums, 30, "the frontend's per-model compute time for identity", mem_serve["cluster"])
    metrics = http_get(mem_serve["http_port"], "/metrics")[1]
    assert 'dyntriton_model_queue_duration_us_total{model="identity",version="1"}' in metrics


def test_a_request_that_fails_validation_is_counted_under_its_model(mem_serve: dict) -> None:
    client = grpcclient.InferenceServerClient(mem_serve["url"])
    wrong = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(Exception, match="FP32"):
        client.infer("identity", [wrong])
    client.close()
    metrics = http_get(mem_serve["http_port"], "/metrics")[1]
    assert 'dyntriton_frontend_request_failures_total{code="INVALID_ARGUMENT",model="identity",protocol="grpc"}' in (
        metrics
    ), metrics


def test_sigint_stops_serve_with_exit_code_0(mem_serve: dict) -> None:
    proc = mem_serve["proc"]
    assert proc.stop(signal.SIGINT) == 0, proc.output()[-2000:]


def test_a_taken_port_is_one_clean_error_without_grpcs_own_log_and_exit_3(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        command = ["frontend", "--file-kv-root", str(tmp_path / "kv"), "--grpc-port", str(port), "--http-port", "0"]
        result = subprocess.run(
            [sys.executable, "-m", "dynamo_triton", *command],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 3, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "--grpc-port" in result.stderr
    assert "add_port.cc" not in result.stderr, "gRPC's own log stays quiet unless --log-verbose"


def test_the_worker_says_it_is_serving_once(cluster: Cluster) -> None:
    proc, system_port = cluster.worker("identity")
    wait_until(lambda: http_get(system_port, "/health")[0] == 200, START_TIMEOUT, "the worker to register", cluster)
    wait_until(lambda: "serving identity" in proc.output(), 10, "the worker's start line", cluster)
    assert proc.output().count("serving identity") == 1, proc.output()
    assert f"system http://127.0.0.1:{system_port}/metrics" in proc.output()
    assert proc.stop() == 0
