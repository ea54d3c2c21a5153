"""End to end on NATS alone: `serve --transport nats --store-kv nats`, then a frontend and a worker
process whose worker is SIGKILLed, against a real nats-server; stock tritonclient. No etcd, no file store.

Tests wait on events (model ready, the dead worker's card gone), never on the clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, free_port, model_ready, wait_until

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def identity(url: str, data: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    item = grpcclient.InferInput("INPUT0", list(data.shape), "INT32")
    item.set_data_from_numpy(data)
    return client.infer("identity", [item], client_timeout=60).as_numpy("OUTPUT0")


def nats_cluster(tmp: Path, nats_server: str) -> Cluster:
    """A cluster whose processes use only NATS: the server from the fixture, a bucket of their own."""
    env = {**os.environ, "NATS_SERVER": nats_server, "DYN_NATS_KV_BUCKET": f"e2e-{uuid.uuid4().hex[:8]}"}
    env["DYN_LOG"] = "info"
    env.pop("DYN_STORE_KV", None)
    return Cluster(tmp, store="nats", env=env)


def cards(cluster: Cluster) -> list[str]:
    """The transport of every model card (any namespace: serve has its own) in the cluster's bucket, read with a
    store of our own."""

    async def read() -> list[str]:
        store = make_plugin_manager().kv_store(
            "nats", servers=cluster.env["NATS_SERVER"], bucket=cluster.env["DYN_NATS_KV_BUCKET"]
        )
        try:
            entries = [entry for entry in await store.list("dyntriton/v1/") if "/models/" in entry.key]
            return [json.loads(entry.value)["transport"] for entry in entries]
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture
def cluster(tmp_path: Path, nats_server: str, require_triton: None) -> Iterator[Cluster]:
    cluster = nats_cluster(tmp_path, nats_server)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_serve_on_nats_alone_answers_small_and_large_tensors(cluster: Cluster) -> None:
    # The server given as an option, not in the environment: serve's worker and frontend follow it.
    server = cluster.env.pop("NATS_SERVER")
    proc, url = cluster.serve("identity", extra=("--transport", "nats", "--nats-server", server))
    cluster.env["NATS_SERVER"] = server  # for cards(), which reads the store itself
    wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
    small = np.arange(10, dtype=np.int32).reshape(2, 5)
    np.testing.assert_array_equal(identity(url, small), small)
    # Past NATS's 1 MiB max_payload: chunked both ways.
    for size in (MiB, 16 * MiB):
        large = np.arange(size // 4, dtype=np.int32).reshape(1, -1)
        np.testing.assert_array_equal(identity(url, large), large)
    found = cards(cluster)
    assert found == ["nats"], found
    assert proc.alive()


def test_a_killed_workers_card_is_swept_by_the_frontends_store(cluster: Cluster) -> None:
    frontend, url, _ = cluster.frontend()
    worker = cluster.command(
        "worker",
        *("--store-kv", "nats", "--transport", "nats", "--model-repository", str(cluster.model_repo)),
        *("--model", "identity", "--lease-ttl", "2", "--system-port", str(free_port())),
    )
    wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
    data = np.arange(8, dtype=np.int32).reshape(1, 8)
    np.testing.assert_array_equal(identity(url, data), data)
    assert len(cards(cluster)) == 1
    worker.popen.send_signal(signal.SIGKILL)
    # Nobody revokes the lease: only the frontend's lease sweeper can remove the card.
    wait_until(lambda: not cards(cluster), 30, "the killed worker's card to be swept", cluster)
    wait_until(lambda: not model_ready(url, "identity"), 30, "the frontend to forget identity", cluster)
    assert frontend.alive()
