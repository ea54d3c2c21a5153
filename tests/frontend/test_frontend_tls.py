"""The KServe frontends over TLS: one certificate for gRPC and HTTP, client certificates when a client CA is given."""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import FrontendSettings
from dynamo_triton.testing.certs import TestCerts, make_certs, openssl_missing
from dynamo_triton.tls import server_context

pytestmark = pytest.mark.skipif(openssl_missing() is not None, reason=openssl_missing() or "")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _tls(certs: TestCerts, *, client_ca: bool = False) -> dict[str, str]:
    options = {"tls_cert": certs.server_cert, "tls_key": certs.server_key}
    if client_ca:
        options["tls_client_ca"] = certs.ca
    return options


# -- gRPC -----------------------------------------------------------------------------------------
async def _live(port: int, credentials: grpc.ChannelCredentials) -> bool:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return (await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)).live


async def test_frontend_tls_requires_client_cert_when_client_ca_given(certs: TestCerts, service):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    settings = FrontendSettings(host="127.0.0.1", port=0, **_tls(certs, client_ca=True))
    frontend = KServeGrpcFrontend(settings, service)
    await frontend.start()
    try:
        ca = Path(certs.ca).read_bytes()
        mutual = grpc.ssl_channel_credentials(
            ca, Path(certs.client_key).read_bytes(), Path(certs.client_cert).read_bytes()
        )
        assert await _live(frontend.port, mutual)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _live(frontend.port, grpc.ssl_channel_credentials(ca))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await frontend.stop(grace=0.5)


async def test_frontend_tls_missing_file_is_a_config_error(tmp_path: Path, service):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    options = {"tls_cert": str(tmp_path / "absent.pem"), "tls_key": str(tmp_path / "absent.key")}
    frontend = KServeGrpcFrontend(FrontendSettings(host="127.0.0.1", port=0, **options), service)
    with pytest.raises(ConfigError, match="cannot read a TLS file"):
        await frontend.start()


# -- HTTP (REST, /health, /metrics) ---------------------------------------------------------------
async def _http_frontend(service, options: dict[str, str]):
    from dyntriton_frontend_http.server import HttpFrontend

    frontend = HttpFrontend(FrontendSettings(host="127.0.0.1", port=0, **options), service)
    await frontend.start()
    return frontend


def _infer(port: int, certs: TestCerts, *, client_cert: bool) -> None:
    """An infer round trip with tritonclient.http over TLS (blocking: run it in a thread)."""
    import tritonclient.http as httpclient

    ssl_options = {"ca_certs": certs.ca}
    if client_cert:
        ssl_options.update(certfile=certs.client_cert, keyfile=certs.client_key)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", ssl=True, ssl_options=ssl_options)
    try:
        data = np.arange(6, dtype=np.int32)
        tensor = httpclient.InferInput("INPUT0", [6], "INT32")
        tensor.set_data_from_numpy(data, binary_data=True)
        result = client.infer("identity", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    finally:
        client.close()


def _get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, str]:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=5) as response:
        return response.status, response.read().decode()


def _client_context(certs: TestCerts, *, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca)
    if client_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


async def test_http_serves_rest_health_and_metrics_over_tls(certs: TestCerts, service):
    frontend = await _http_frontend(service, _tls(certs))
    try:
        await asyncio.to_thread(_infer, frontend.port, certs, client_cert=False)
        context = _client_context(certs)
        assert (await asyncio.to_thread(_get, frontend.port, "/v2/health/ready", context))[0] == 200
        assert (await asyncio.to_thread(_get, frontend.port, "/health", context))[0] == 200
        status, metrics = await asyncio.to_thread(_get, frontend.port, "/metrics", context)
        assert status == 200 and "dyntriton_frontend" in metrics
    finally:
        await frontend.stop()


def _plain_get(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/v2/health/live")
        connection.getresponse()
    finally:
        connection.close()


async def test_plain_http_to_the_tls_port_is_closed_and_the_port_keeps_serving(certs: TestCerts, service):
    frontend = await _http_frontend(service, _tls(certs))
    try:
        # No answer in clear text (a TLS server has no HTTP to say it with): the connection just ends.
        with pytest.raises((http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError)):
            await asyncio.to_thread(_plain_get, frontend.port)
        assert (await asyncio.to_thread(_get, frontend.port, "/v2/health/live", _client_context(certs)))[0] == 200
    finally:
        await frontend.stop()


async def test_http_mutual_tls_refuses_a_client_without_a_certificate(certs: TestCerts, service):
    frontend = await _http_frontend(service, _tls(certs, client_ca=True))
    try:
        await asyncio.to_thread(_infer, frontend.port, certs, client_cert=True)
        status, _ = await asyncio.to_thread(_get, frontend.port, "/metrics", _client_context(certs, client_cert=True))
        assert status == 200
        # TLS 1.3: the server's refusal arrives after the client's handshake ends, on its first read.
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.to_thread(_get, frontend.port, "/v2/health/live", _client_context(certs))
        with pytest.raises(Exception, match=r"(?i)closed|certificate|reset"):  # geventhttpclient's own types
            await asyncio.to_thread(_infer, frontend.port, certs, client_cert=False)
        assert service.calls == 1  # only the client with a certificate reached the service
    finally:
        await frontend.stop()


async def test_http_with_a_bad_tls_file_fails_before_its_port_opens(certs: TestCerts, tmp_path: Path, service):
    from dyntriton_frontend_http.server import HttpFrontend

    options = {"tls_cert": certs.server_cert, "tls_key": certs.client_key}  # another certificate's key
    frontend = HttpFrontend(FrontendSettings(host="127.0.0.1", port=0, **options), service)
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        await frontend.start()
    assert frontend._runner is None


# -- the files: each bad one named, with what to do ------------------------------------------------
def _not_pem(tmp_path: Path) -> str:
    path = tmp_path / "not-pem.pem"
    path.write_text("this is not a certificate\n")
    return str(path)


def _encrypted_key(tmp_path: Path, certs: TestCerts) -> str:
    path = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", certs.server_key, "-aes256", "-passout", "pass:secret", "-out", str(path)],
        check=True,
        capture_output=True,
    )
    return str(path)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("missing cert", r"cannot read the TLS file '.*absent\.pem' \(--tls-cert\): No such file"),
        ("cert not PEM", r"the TLS certificate '.*not-pem\.pem' \(--tls-cert\) is not a PEM certificate"),
        ("key not PEM", r"the TLS key '.*not-pem\.pem' \(--tls-key\) is not a PEM private key"),
        ("key of another cert", r"the TLS key '.*client\.key' \(--tls-key\) does not belong to the certificate"),
        ("encrypted key", r"the TLS key '.*encrypted\.key' \(--tls-key\) is encrypted"),
        ("client CA not PEM", r"the TLS client CA '.*not-pem\.pem' \(--tls-client-ca\) holds no PEM certificate"),
        ("missing client CA", r"cannot read the TLS file '.*absent\.pem' \(--tls-client-ca\)"),
    ],
)
def test_each_bad_tls_file_is_named_with_what_to_do(certs: TestCerts, tmp_path: Path, bad: str, message: str):
    cert, key, ca = certs.server_cert, certs.server_key, certs.ca
    absent = str(tmp_path / "absent.pem")
    cert, key, ca = {
        "missing cert": (absent, key, ca),
        "cert not PEM": (_not_pem(tmp_path), key, ca),
        "key not PEM": (cert, _not_pem(tmp_path), ca),
        "key of another cert": (cert, certs.client_key, ca),
        "encrypted key": (cert, _encrypted_key(tmp_path, certs), ca),
        "client CA not PEM": (cert, key, _not_pem(tmp_path)),
        "missing client CA": (cert, key, absent),
    }[bad]
    with pytest.raises(ConfigError, match=message) as caught:
        server_context(cert, key, ca)
    assert caught.value.hint


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_is_named(certs: TestCerts, tmp_path: Path):
    key = tmp_path / "server.key"
    shutil.copy(certs.server_key, key)
    key.chmod(0)
    with pytest.raises(ConfigError, match=r"cannot read the TLS file '.*server\.key' \(--tls-key\): Permission"):
        server_context(certs.server_cert, str(key))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_frontend_with_a_bad_tls_file_exits_3_naming_it(certs: TestCerts, tmp_path: Path):
    argv = [sys.executable, "-m", "dynamo_triton", "frontend", "--store-kv", "file", "--file-kv-root", str(tmp_path)]
    argv += ["--grpc-port", str(_free_port()), "--http-port", str(_free_port())]
    argv += ["--tls-cert", certs.server_cert, "--tls-key", certs.client_key]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "client.key' (--tls-key) does not belong to the certificate" in done.stderr
    assert "openssl pkey -pubout" in done.stderr  # what to do
    assert "Traceback" not in done.stderr


# -- the options ------------------------------------------------------------------------------------
def _parsed(command: str, args: list[str]):
    """The plugins and the click context of ``dyntriton COMMAND ARGS`` (parsed, not run)."""
    from dynamo_triton.cli.main import core_command
    from dynamo_triton.plugins import make_plugin_manager

    plugins = make_plugin_manager()
    return plugins, core_command(command, plugins).make_context(command, list(args))


def test_one_certificate_serves_both_ports_unless_http_tls_is_off(certs: TestCerts):
    from dynamo_triton.cli.frontend_cmd import frontend_config

    tls = ["--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-client-ca", certs.ca]
    plugins, ctx = _parsed("frontend", tls)
    both = dict(frontend_config(plugins, ctx.params).frontends)
    assert set(both) == {"kserve-grpc", "http"}, "the default frontends"
    for settings in both.values():
        assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (
            certs.server_cert,
            certs.server_key,
            certs.ca,
        )
        assert settings.serves_tls()
    plugins, ctx = _parsed("frontend", [*tls, "--no-http-tls"])
    grpc_only = dict(frontend_config(plugins, ctx.params).frontends)
    assert grpc_only["kserve-grpc"].serves_tls()
    assert not grpc_only["http"].serves_tls()


def test_serve_hands_its_frontend_processes_the_tls_options():
    from dynamo_triton.cli.composition import child_argv
    from dynamo_triton.cli.main import core_command

    args = ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem", "--no-http-tls"]
    plugins, ctx = _parsed("serve", [*args, "--transport-token", "s3cret", "--etcd-endpoints", "http://e:1"])
    env: dict[str, str] = {}
    argv = child_argv(ctx, core_command("frontend", plugins), env=env)
    for flag, value in zip(args[:-1:2], args[1:-1:2], strict=True):
        assert argv[argv.index(flag) + 1] == value
    assert "--no-http-tls" in argv  # "off" is said, or the child would fall back to the default (on)
    assert argv[argv.index("--etcd-endpoints") + 1] == "http://e:1", "a plugin's option, forwarded generically"
    assert "s3cret" not in argv and env == {"DYN_TRANSPORT_TOKEN": "s3cret"}, "secrets go by environment"
    assert "--workers" not in argv, "only the options the child command has"
