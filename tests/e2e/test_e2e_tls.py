"""``serve`` with the frontend's TLS: gRPC and REST both answer over mutual TLS, in every frontend process."""

from __future__ import annotations

import http.client
import signal
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dynamo_triton.testing.certs import TestCerts, make_certs, openssl_missing
from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, free_port, process_tree, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    pytest.mark.skipif(openssl_missing() is not None, reason=openssl_missing() or ""),
]

#: Fresh connections per port: the kernel spreads them over both frontend processes (SO_REUSEPORT).
CONNECTIONS = 12


def _grpc(url: str, certs: TestCerts) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        url, ssl=True, root_certificates=certs.ca, private_key=certs.client_key, certificate_chain=certs.client_cert
    )


def _rest(port: int, certs: TestCerts) -> httpclient.InferenceServerClient:
    ssl_options = {"ca_certs": certs.ca, "certfile": certs.client_cert, "keyfile": certs.client_key}
    return httpclient.InferenceServerClient(f"127.0.0.1:{port}", ssl=True, ssl_options=ssl_options)


def _ready(url: str, certs: TestCerts) -> bool:
    client = _grpc(url, certs)
    try:
        return client.is_model_ready("identity")
    finally:
        client.close()


def test_serve_answers_grpc_and_rest_over_mutual_tls_in_every_frontend_process(cluster: Cluster) -> None:
    certs = make_certs(cluster.tmp / "certs")
    http_port = free_port()
    tls = ("--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-client-ca", certs.ca)
    proc, url = cluster.serve("identity", extra=("--http-port", str(http_port), "--frontends", "2", *tls))
    wait_until(lambda: _ready(url, certs), START_TIMEOUT, "identity to be ready over gRPC with TLS", cluster)

    assert proc.popen is not None
    frontends = [
        argv
        for pid in process_tree(proc.popen.pid) - {proc.popen.pid}
        if b"frontend" in (argv := Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    ]
    assert len(frontends) == 1 and all(flag.encode() in frontends[0] for flag in tls)  # serve handed them over

    data = np.arange(8, dtype=np.int32).reshape(1, 8)
    for _ in range(CONNECTIONS):
        grpc_client = _grpc(url, certs)
        rest_client = _rest(http_port, certs)
        try:
            wait_until(lambda c=grpc_client: c.is_model_ready("identity"), 60, "identity on this connection", cluster)
            wait_until(lambda c=rest_client: c.is_model_ready("identity"), 60, "identity over REST", cluster)
            tensor = grpcclient.InferInput("INPUT0", [1, 8], "INT32")
            tensor.set_data_from_numpy(data)
            np.testing.assert_array_equal(grpc_client.infer("identity", [tensor]).as_numpy("OUTPUT0"), data)
            rest_tensor = httpclient.InferInput("INPUT0", [1, 8], "INT32")
            rest_tensor.set_data_from_numpy(data)
            np.testing.assert_array_equal(rest_client.infer("identity", [rest_tensor]).as_numpy("OUTPUT0"), data)
        finally:
            grpc_client.close()
            rest_client.close()

    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    with pytest.raises((http.client.BadStatusLine, ConnectionResetError)):  # closed, never answered in clear
        plain.request("GET", "/v2/health/ready")
        plain.getresponse()
    plain.close()
    wait_until(lambda: f"HTTP https://127.0.0.1:{http_port}" in proc.output(), 30, "the summary's https line", cluster)
    assert proc.stop(signal.SIGTERM) == 0, proc.output()[-3000:]
