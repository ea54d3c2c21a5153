"""End to end: frontend and worker processes, the file store, real Triton, stock tritonclient.

One frontend and two workers serve identity; tests check routing, validation
errors, deadlines, a large tensor, and what happens when a worker is killed.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, http_get, model_ready, wait_until, worker_requests

pytestmark = pytest.mark.slow


def identity_request(client: grpcclient.InferenceServerClient, data: np.ndarray, **kwargs: object) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity", [tensor], **kwargs)
    return result.as_numpy("OUTPUT0")


def start_identity_cluster(cluster: Cluster, workers: int = 2) -> tuple[str, list[int]]:
    """Frontend first, then the workers (workers started after the frontend are discovered)."""
    frontend, url, _ = cluster.frontend()
    system_ports = [cluster.worker("identity")[1] for _ in range(workers)]
    wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
    for port in system_ports:
        wait_until(lambda p=port: http_get(p, "/health")[0] == 200, START_TIMEOUT, f"worker :{port} healthy", cluster)
    assert frontend.alive()
    return url, system_ports


def test_two_workers_share_the_traffic_and_answers_are_correct(cluster: Cluster) -> None:
    url, ports = start_identity_cluster(cluster)
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(1)
    for _ in range(20):
        data = rng.integers(-1000, 1000, size=(1, 7), dtype=np.int32)
        np.testing.assert_array_equal(identity_request(client, data), data)
    counts = [worker_requests(port, "identity") for port in ports]
    assert all(count >= 5 for count in counts), f"round-robin should reach both workers, got {counts}"
    assert sum(counts) == 20


def test_bad_requests_get_invalid_argument_and_not_found(cluster: Cluster) -> None:
    url, _ = start_identity_cluster(cluster, workers=1)
    client = grpcclient.InferenceServerClient(url)
    wrong = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity", [wrong])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "FP32" in info.value.message() and "INT32" in info.value.message()

    unknown = grpcclient.InferInput("NOPE", [1, 3], "INT32")
    unknown.set_data_from_numpy(np.ones((1, 3), dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity", [unknown])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "NOPE" in info.value.message()

    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", [unknown])
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_a_64_mib_tensor_round_trips(cluster: Cluster) -> None:
    url, _ = start_identity_cluster(cluster, workers=1)
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(16 * 1024 * 1024, dtype=np.int32).reshape(1, -1)  # 64 MiB
    np.testing.assert_array_equal(identity_request(client, data, client_timeout=120), data)


def test_sigkill_of_a_worker_under_load(cluster: Cluster) -> None:
    """No request hangs, failures are UNAVAILABLE, the other worker keeps serving, a restart is picked up."""
    url, ports = start_identity_cluster(cluster)
    victim = cluster.procs[1]
    outcomes: list[str] = []
    stop = threading.Event()

    def load() -> None:
        client = grpcclient.InferenceServerClient(url)
        data = np.arange(16, dtype=np.int32).reshape(1, 16)
        while not stop.is_set():
            try:
                out = identity_request(client, data, client_timeout=20)
                outcomes.append("ok" if np.array_equal(out, data) else "wrong")
            except InferenceServerException as exc:
                outcomes.append(str(exc.status()))
        client.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    victim.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(cluster.lease_ttl + 2.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    failures = {outcome for outcome in outcomes if outcome != "ok"}
    assert failures <= {"StatusCode.UNAVAILABLE"}, f"unexpected outcomes: {failures}"
    assert outcomes[-20:].count("ok") == 20, "the surviving worker must keep serving"
    assert time.monotonic() - killed_at < 60

    # The killed instance's card leaves the store within its lease TTL.
    from dynamo_triton.plugins import make_plugin_manager

    async def cards() -> int:
        store = make_plugin_manager().kv_store("file", root=cluster.env["DYN_FILE_KV"])
        try:
            return len(await store.list("dyntriton/v1/dynamo/models/identity/"))
        finally:
            await store.close()

    import asyncio

    wait_until(lambda: asyncio.run(cards()) == 1, cluster.lease_ttl * 3, "the dead worker's card to expire", cluster)

    # A restarted worker is picked up and gets traffic.
    _, new_port = cluster.worker("identity")
    wait_until(lambda: http_get(new_port, "/health")[0] == 200, START_TIMEOUT, "restarted worker", cluster)
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(4, dtype=np.int32).reshape(1, 4)
    wait_until(
        lambda: (identity_request(client, data) is not None) and worker_requests(new_port, "identity") > 0,
        30,
        "traffic to reach the restarted worker",
        cluster,
    )
    assert ports  # the original ports were used by the first two workers
