"""End to end: frontend and worker processes, the file store, real Triton, stock tritonclient.

One frontend and two workers serve identity, shared by the module's tests (in file
order: the last ones kill and replace workers); tests check routing, validation
errors, a large tensor, what happens when a worker is killed, and statistics that
never go down when a worker leaves. Tests wait on events, never on the clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[Cluster, str, list[int]]]:
    """One frontend then two identity workers (workers started after the frontend are discovered)."""
    tmp = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    try:
        frontend, url, _ = cluster.frontend()
        system_ports = [cluster.worker("identity")[1] for _ in range(2)]
        for port in system_ports:
            wait_until(lambda p=port: http_get(p, "/health")[0] == 200, START_TIMEOUT, f"worker :{port}", cluster)
        wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
        assert frontend.alive()
        yield cluster, url, system_ports
    finally:
        cluster.stop()


def identity_cards(cluster: Cluster) -> int:
    """How many identity cards the store holds now."""
    from dynamo_triton.plugins import make_plugin_manager

    async def count() -> int:
        store = make_plugin_manager().kv_store("file", root=cluster.env["DYN_FILE_KV"])
        try:
            return len(await store.list("dyntriton/v1/dynamo/models/identity/"))
        finally:
            await store.close()

    return asyncio.run(count())


def test_two_workers_share_the_traffic_and_answers_are_correct(shared: tuple[Cluster, str, list[int]]) -> None:
    _, url, ports = shared
    before = [worker_requests(port, "identity") for port in ports]
    client = grpcclient.InferenceServerClient(url)
    rng = np.random.default_rng(1)
    for _ in range(20):
        data = rng.integers(-1000, 1000, size=(1, 7), dtype=np.int32)
        np.testing.assert_array_equal(identity_request(client, data), data)
    counts = [worker_requests(port, "identity") - was for port, was in zip(ports, before, strict=True)]
    assert all(count >= 5 for count in counts), f"round-robin should reach both workers, got {counts}"
    assert sum(counts) == 20


def test_bad_requests_get_invalid_argument_and_not_found(shared: tuple[Cluster, str, list[int]]) -> None:
    _, url, _ = shared
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


def test_a_64_mib_tensor_round_trips(shared: tuple[Cluster, str, list[int]]) -> None:
    _, url, _ = shared
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(16 * 1024 * 1024, dtype=np.int32).reshape(1, -1)  # 64 MiB
    np.testing.assert_array_equal(identity_request(client, data, client_timeout=120), data)


def test_sigkill_of_a_worker_under_load(shared: tuple[Cluster, str, list[int]]) -> None:
    """No request hangs, failures are UNAVAILABLE, the other worker keeps serving, a restart is picked up."""
    cluster, url, _ = shared
    victim = next(proc for proc in cluster.procs if "worker" in proc.argv and proc.alive())
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
    try:
        wait_until(lambda: outcomes.count("ok") >= 20, 30, "load to be flowing", cluster)
        victim.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        # The killed instance's card leaves the store within its lease TTL...
        wait_until(lambda: identity_cards(cluster) == 1, cluster.lease_ttl * 3, "the dead worker's card to go", cluster)
        # ...and the survivor keeps answering everything sent from then on.
        gone = len(outcomes)
        wait_until(lambda: outcomes[gone:].count("ok") >= 20, 30, "20 answers from the survivor", cluster)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    failures = {outcome for outcome in outcomes if outcome != "ok"}
    assert failures <= {"StatusCode.UNAVAILABLE"}, f"unexpected outcomes: {failures}"
    assert set(outcomes[gone:]) == {"ok"}, "the surviving worker must serve every request once the card is gone"
    assert time.monotonic() - killed_at < 60

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


def test_model_statistics_never_decrease_when_a_worker_leaves(shared: tuple[Cluster, str, list[int]]) -> None:
    cluster, url, _ = shared
    client = grpcclient.InferenceServerClient(url)
    data = np.arange(4, dtype=np.int32).reshape(1, 4)
    wait_until(lambda: identity_cards(cluster) == 2, START_TIMEOUT, "two identity workers", cluster)
    for _ in range(10):
        identity_request(client, data)

    def inference_count() -> int:
        stats = client.get_inference_statistics("identity", as_json=True)
        return int(stats["model_stats"][0].get("inference_count", 0))

    before = inference_count()
    assert before >= 10
    leaving = next(proc for proc in reversed(cluster.procs) if "worker" in proc.argv and proc.alive())
    assert leaving.stop(signal.SIGTERM) == 0, leaving.output()[-2000:]
    wait_until(lambda: identity_cards(cluster) == 1, cluster.lease_ttl * 3, "the leaving worker's card to go", cluster)
    assert inference_count() == before, "what the departed worker served still counts; nothing ran since"
    identity_request(client, data)
    assert inference_count() == before + 1
    client.close()
