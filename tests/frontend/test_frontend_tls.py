"""The gRPC frontend over TLS, with client certificates required when a client CA is given."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from dynamo_triton.frontend import FrontendSettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make test certs")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server cert for 127.0.0.1 and a client cert, all signed by the CA."""
    root = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(root / "ca.key"), "-out", str(root / "ca.pem"))  # fmt: skip
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(root / f"{name}.key"), "-out", str(root / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(root / f"{name}.csr"), "-CA", str(root / "ca.pem"),
                 "-CAkey", str(root / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(root / "san.cnf"), "-out", str(root / f"{name}.pem"))  # fmt: skip
    return root


async def _live(port: int, credentials: grpc.ChannelCredentials) -> bool:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)).live


async def test_frontend_tls_requires_client_cert_when_client_ca_given(certs: Path, service):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    options = {
        "tls_cert": str(certs / "server.pem"),
        "tls_key": str(certs / "server.key"),
        "tls_client_ca": str(certs / "ca.pem"),
    }
    frontend = KServeGrpcFrontend(FrontendSettings(host="127.0.0.1", port=0, options=options), service)
    await frontend.start()
    try:
        ca = (certs / "ca.pem").read_bytes()
        mutual = grpc.ssl_channel_credentials(
            ca, (certs / "client.key").read_bytes(), (certs / "client.pem").read_bytes()
        )
        assert await _live(frontend.port, mutual)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _live(frontend.port, grpc.ssl_channel_credentials(ca))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await frontend.stop(grace=0.5)


async def test_frontend_tls_missing_file_is_a_config_error(tmp_path: Path, service):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    from dynamo_triton.errors import ConfigError

    options = {"tls_cert": str(tmp_path / "absent.pem"), "tls_key": str(tmp_path / "absent.key")}
    frontend = KServeGrpcFrontend(FrontendSettings(host="127.0.0.1", port=0, options=options), service)
    with pytest.raises(ConfigError, match="cannot read a TLS file"):
        await frontend.start()
