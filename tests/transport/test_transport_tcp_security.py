"""tcp request plane protection: mutual TLS and the shared token, refusals logged once and explained."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from dyntriton_transport_tcp.frames import HEADER, FrameType
from dyntriton_transport_tcp.transport import TcpTransport

from dynamo_triton.errors import ConfigError, TransportError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.transport_contract import collect, echo
from dynamo_triton.transport import TransportSettings

WAIT = 10.0
SERVER_LOG = "dyntriton_transport_tcp.server"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for test certs")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(root: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(root / f"{name}.key"), "-out", str(root / f"{name}.pem"))  # fmt: skip


def _signed(root: Path, ca: str, name: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(root / f"{name}.key"), "-out", str(root / f"{name}.csr"))  # fmt: skip
    _openssl("x509", "-req", "-in", str(root / f"{name}.csr"), "-CA", str(root / f"{ca}.pem"),
             "-CAkey", str(root / f"{ca}.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(root / "san.cnf"), "-out", str(root / f"{name}.pem"))  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA ``ca`` signing ``worker`` and ``frontend`` (SAN 127.0.0.1); CA ``rogue`` signing ``stranger``."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for test certs")
    root = tmp_path_factory.mktemp("transport-certs")
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _ca(root, "ca")
    _ca(root, "rogue")
    _signed(root, "ca", "worker")
    _signed(root, "ca", "frontend")
    _signed(root, "rogue", "stranger")
    return root


def tls(certs: Path, name: str, ca: str = "ca", **more: object) -> TcpTransport:
    return TcpTransport(
        tls_cert=str(certs / f"{name}.pem"), tls_key=str(certs / f"{name}.key"), tls_ca=str(certs / f"{ca}.pem"), **more
    )


@pytest.fixture
async def serving() -> AsyncIterator[Callable]:
    """``await serving(transport)`` starts an echo server; returns its address. All stop at teardown."""
    servers = []

    async def start(transport: TcpTransport) -> str:
        server = transport.server("127.0.0.1", 0)
        servers.append(server)
        return await server.start(echo)

    yield start
    for server in servers:
        await server.stop(grace=0)


async def call_once(transport: TcpTransport, address: str) -> list[bytes]:
    client = transport.client()
    try:
        return await collect(client.call(address, "x", b"hello"), WAIT)
    finally:
        await client.close()


async def refused(transport: TcpTransport, address: str) -> TransportError:
    with pytest.raises(TransportError) as caught:
        await call_once(transport, address)
    assert caught.value.status == "UNAVAILABLE"
    return caught.value


async def one_refusal(caplog: pytest.LogCaptureFixture, *words: str) -> str:
    """The server's single WARNING line for the refused connection (waited for), containing ``words``."""
    for _ in range(200):
        lines = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG and r.levelno == logging.WARNING]
        if lines:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a second line, if any, would come at once
    lines = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG and r.levelno == logging.WARNING]
    assert len(lines) == 1, lines
    assert lines[0].startswith("refused tcp connection from 127.0.0.1:")
    for word in words:
        assert word in lines[0]
    return lines[0]


# -- TLS -----------------------------------------------------------------------------------------


@needs_openssl
async def test_mutual_tls_round_trip(certs: Path, serving: Callable) -> None:
    address = await serving(tls(certs, "worker"))
    assert await call_once(tls(certs, "frontend"), address) == [b"hello"]
    big = bytes(range(256)) * 8192  # 2 MiB through the TLS layer, both ways
    client = tls(certs, "frontend").client()
    try:
        assert await collect(client.call(address, "x", big), WAIT) == [big]
    finally:
        await client.close()


@needs_openssl
async def test_a_tls_worker_refuses_a_plain_frontend(
    certs: Path, serving: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    address = await serving(tls(certs, "worker"))
    error = await refused(TcpTransport(), address)
    assert "TLS" in str(error) and "--transport-tls-cert" in str(error)
    await one_refusal(caplog, "plain (non-TLS) connection", "--transport-tls-cert")


@needs_openssl
async def test_a_plain_worker_is_named_to_a_tls_frontend(
    certs: Path, serving: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    address = await serving(TcpTransport())
    error = await refused(tls(certs, "frontend"), address)
    assert "TLS" in str(error) and "--transport-tls" in str(error)
    lines = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG]
    assert any("speaks TLS" in line for line in lines), lines


@needs_openssl
async def test_a_certificate_from_another_ca_is_refused_both_ways(
    certs: Path, serving: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    address = await serving(tls(certs, "worker"))
    error = await refused(tls(certs, "stranger", ca="ca"), address)
    assert "TLS" in str(error)
    await one_refusal(caplog, "certificate")
    # The frontend does not trust a worker whose certificate another CA signed.
    error = await refused(tls(certs, "frontend", ca="rogue"), address)
    assert "certificate" in str(error) and "--transport-tls-ca" in str(error)


def test_tls_settings_are_all_or_nothing_and_files_must_load(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="together"):
        TcpTransport(tls_cert=str(certs / "worker.pem"), tls_key=str(certs / "worker.key"))
    with pytest.raises(ConfigError, match="cannot read the TLS file"):
        tls(certs, "absent").server()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"junk\.pem. \(--transport-tls-cert\) is not a PEM certificate"):
        TcpTransport(
            tls_cert=str(tmp_path / "junk.pem"), tls_key=str(certs / "worker.key"), tls_ca=str(certs / "ca.pem")
        ).client()


# -- token ---------------------------------------------------------------------------------------


async def test_the_right_token_is_served(serving: Callable) -> None:
    address = await serving(TcpTransport(token="s3cret"))
    assert await call_once(TcpTransport(token="s3cret"), address) == [b"hello"]


async def test_no_token_is_refused_and_the_frontend_is_told_what_to_set(
    serving: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    address = await serving(TcpTransport(token="s3cret"))
    error = await refused(TcpTransport(), address)
    assert "requires a token" in str(error) and "--transport-token" in str(error)
    await one_refusal(caplog, "no token", "--transport-token")


async def test_a_wrong_token_is_refused(serving: Callable, caplog: pytest.LogCaptureFixture) -> None:
    address = await serving(TcpTransport(token="s3cret"))
    error = await refused(TcpTransport(token="guess"), address)
    assert "wrong token" in str(error) and "--transport-token" in str(error)
    await one_refusal(caplog, "wrong token")


async def test_a_frontend_with_a_token_notices_a_worker_without_one(serving: Callable) -> None:
    address = await serving(TcpTransport())
    began = asyncio.get_running_loop().time()
    error = await refused(TcpTransport(token="s3cret"), address)
    assert "does not ask for a token" in str(error) and "--transport-token" in str(error)
    assert asyncio.get_running_loop().time() - began < 1.0, "known at the first PONG, not after a timeout"


async def test_a_plain_frontend_with_a_token_is_told_the_worker_wants_tls(
    certs: Path, serving: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    address = await serving(tls(certs, "worker", token="s3cret"))
    began = asyncio.get_running_loop().time()
    error = await refused(TcpTransport(token="s3cret"), address)
    assert "TLS" in str(error) and "--transport-tls" in str(error)
    assert asyncio.get_running_loop().time() - began < 1.0
    await one_refusal(caplog, "plain (non-TLS) connection")


@needs_openssl
async def test_tls_and_token_together(certs: Path, serving: Callable, caplog: pytest.LogCaptureFixture) -> None:
    address = await serving(tls(certs, "worker", token="s3cret"))
    assert await call_once(tls(certs, "frontend", token="s3cret"), address) == [b"hello"]
    await refused(tls(certs, "frontend", token="nope"), address)
    await one_refusal(caplog, "wrong token")


async def test_an_unauthenticated_peer_cannot_make_the_worker_allocate(
    serving: Callable, caplog: pytest.LogCaptureFixture
) -> None:
    """A stranger announcing a 1 GiB frame is refused on the header, before any buffer is made for it."""
    address = await serving(TcpTransport(token="s3cret"))
    port = int(address.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.setblocking(False)
        await loop.sock_sendall(sock, HEADER.pack(FrameType.REQUEST, 1, 1 << 30) + b"x" * 1024)
        received = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT):
            received += chunk  # the challenge, then the close
    assert received[:1] == bytes([FrameType.CHALLENGE])
    await one_refusal(caplog, "no token", "REQUEST")


# -- settings through the plugin manager -----------------------------------------------------------


def test_settings_reach_the_tcp_factory_and_the_token_stays_out_of_reprs() -> None:
    settings = TransportSettings(token="s3cret", heartbeat=0.25)
    transport = make_plugin_manager().transport("tcp", settings)
    assert transport.token == "s3cret" and transport.heartbeat == 0.25
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(transport)
    assert make_plugin_manager().transport("tcp").heartbeat == 1.0


def test_a_transport_without_settings_refuses_to_pretend_it_is_secured() -> None:
    plugins = make_plugin_manager()
    assert plugins.transport("inproc", TransportSettings(heartbeat=0.5)).name == "inproc"
    with pytest.raises(ConfigError, match="cannot use TLS or a token"):
        plugins.transport("inproc", TransportSettings(token="s3cret"))
