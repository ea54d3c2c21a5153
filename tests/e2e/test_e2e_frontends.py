"""Several frontend processes share the KServe ports (SO_REUSEPORT) and each serves every model."""

from __future__ import annotations

import re
import signal
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, model_ready, wait_until

pytestmark = pytest.mark.slow


def listeners(port: int) -> set[int]:
    """Pids of the processes listening on ``port``."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def test_serve_with_two_frontends_shares_both_ports_and_stops_them(cluster: Cluster) -> None:
    proc, url = cluster.serve("identity", extra=("--frontends", "2"))
    grpc_port = int(url.rsplit(":", 1)[1])
    http_port = int(proc.argv[proc.argv.index("--http-port") + 1])
    wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
    wait_until(lambda: len(listeners(grpc_port)) == 2, 60, "two processes listening on the gRPC port", cluster)
    wait_until(lambda: len(listeners(http_port)) == 2, 60, "two processes listening on the HTTP port", cluster)

    # Fresh connections are spread over both processes by the kernel; every one must answer right.
    data = np.arange(8, dtype=np.int32).reshape(1, 8)
    for _ in range(20):
        client = grpcclient.InferenceServerClient(url)
        try:
            wait_until(lambda c=client: c.is_model_ready("identity"), 60, "identity on this connection", cluster)
            tensor = grpcclient.InferInput("INPUT0", [1, 8], "INT32")
            tensor.set_data_from_numpy(data)
            np.testing.assert_array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"), data)
        finally:
            client.close()
    rest = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        assert rest.is_server_live()
    finally:
        rest.close()

    assert proc.stop(signal.SIGTERM) == 0, proc.output()[-3000:]
    wait_until(lambda: not listeners(grpc_port) and not listeners(http_port), 60, "every frontend to stop", cluster)


def test_frontends_need_a_shared_store(cluster: Cluster) -> None:
    cluster.store = "mem"
    proc, _ = cluster.serve("identity", extra=("--frontends", "2"))
    assert proc.popen is not None
    assert proc.popen.wait(60) == 2
    assert "--frontends > 1 needs separate processes" in proc.output()
