"""nats-only behaviour: chunk boundaries, vanished and silent workers, where the server comes from,
unreachable NATS, credentials and mutual TLS, a missing nats-py. Against real nats-servers."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dyntriton_transport_nats.connection import NatsSettings
from dyntriton_transport_nats.transport import NatsTransport
from dyntriton_transport_nats.wire import chunks

from dynamo_triton.errors import (
    DeadlineExceededError,
    PeerGoneError,
    PeerUnresponsiveError,
    PluginError,
    TransportError,
)
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.certs import make_certs
from dynamo_triton.testing.nats import run_nats
from dynamo_triton.testing.transport_contract import collect, echo
from dynamo_triton.transport import TransportRequest

WAIT = 10.0
MiB = 1024 * 1024


def transport(url: str, **kwargs: object) -> NatsTransport:
    return NatsTransport(settings=NatsSettings(servers=(url,)), subject_prefix=f"t.{uuid.uuid4().hex[:8]}", **kwargs)


async def round_trip(nats: NatsTransport, handler, payload: bytes, endpoint: str = "x") -> list[bytes]:
    server = nats.server()
    address = await server.start(handler)
    client = nats.client()
    try:
        return await collect(client.call(address, endpoint, payload), WAIT)
    finally:
        await client.close()
        await server.stop(grace=0)


def test_chunks_cut_parts_at_size_and_copy_only_across_parts() -> None:
    parts = [memoryview(b"abcde"), memoryview(b"fgh"), memoryview(b"ijklmnop")]
    assert [bytes(c) for c in chunks(parts, 4)] == [b"abcd", b"efgh", b"ijkl", b"mnop"]
    assert [bytes(c) for c in chunks(parts, 100)] == [b"abcdefghijklmnop"]
    assert [bytes(c) for c in chunks([memoryview(b"")], 4)] == [b""]
    single = memoryview(b"x" * 10)
    assert all(isinstance(c, memoryview) for c in chunks([single], 4)), "one part's slices are not copied"


@pytest.mark.parametrize("size", [0, 999, 1000, 1001, 4096])
async def test_requests_and_responses_across_chunk_boundaries(nats_server: str, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))

    async def parts(request: TransportRequest) -> AsyncIterator[list]:
        assert bytes(request.payload) == payload
        yield [b"<", memoryview(request.payload), bytearray(b">")]
        yield request.payload

    assert await round_trip(transport(nats_server, max_chunk=1000), parts, payload) == [b"<" + payload + b">", payload]


async def test_one_mib_either_side_of_max_payload(nats_server: str) -> None:
    nats = transport(nats_server)
    for size in (MiB - 1, MiB, MiB + 1):
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        assert await round_trip(nats, echo, payload) == [payload]


async def test_the_cli_reads_nats_server_from_the_environment_into_the_plugins_settings(
    nats_server: str, monkeypatch
) -> None:
    from dynamo_triton.cli.composition import plugin_settings
    from dynamo_triton.cli.main import core_command

    monkeypatch.setenv("NATS_SERVER", nats_server)
    monkeypatch.setenv("DYNTRITON_NATS_SUBJECT_PREFIX", f"env.{uuid.uuid4().hex[:8]}")
    plugins = make_plugin_manager()
    ctx = core_command("worker", plugins).make_context("worker", ["--transport", "nats"])
    nats = plugins.transport("nats", plugin_settings(plugins, "transport", "nats", ctx.params))
    assert nats.name == "nats" and nats.settings.servers == (nats_server,)
    assert nats.subject_prefix.startswith("env.")
    assert await round_trip(nats, echo, b"hello") == [b"hello"]


async def test_cli_transport_settings_become_the_nats_connections_tls_and_token(tmp_path: Path) -> None:
    from dynamo_triton.transport import TransportSettings

    with run_nats(tmp_path, extra_args=["--auth", "t0ken"]) as server:
        settings = TransportSettings(token="t0ken", options={"subject_prefix": "tok"})  # options win
        nats = make_plugin_manager().transport("nats", settings)
        assert nats.subject_prefix == "tok"
        nats.settings = NatsSettings(servers=(server.url,), token=nats.settings.token)
        assert await round_trip(nats, echo, b"tok") == [b"tok"]
        with_ca = make_plugin_manager().transport("nats", TransportSettings(tls_ca="/ca.pem"))
        assert with_ca.settings.ca_file == "/ca.pem" and with_ca.settings.tls


async def test_unreachable_nats_names_the_server_and_how_to_start_one(nats_server: str) -> None:
    nats = transport("nats://127.0.0.1:1")
    with pytest.raises(TransportError) as caught:
        await nats.server().start(echo)
    assert "cannot reach NATS at nats://127.0.0.1:1" in str(caught.value)
    assert "nats-server" in str(caught.value.hint) and "NATS_SERVER" in str(caught.value.hint)
    client = nats.client()
    with pytest.raises(PeerGoneError, match=re.escape("cannot reach NATS at nats://127.0.0.1:1")):
        await collect(client.call("nats:some.worker", "x", b""), WAIT)
    await client.close()


async def test_bad_addresses_and_endpoints_are_named(nats_server: str) -> None:
    client = transport(nats_server).client()
    with pytest.raises(TransportError, match="expected 'nats:SUBJECT'"):
        await collect(client.call("tcp://127.0.0.1:5", "x", b""), WAIT)
    with pytest.raises(TransportError, match=re.escape("endpoint name 'a.b'")):
        await collect(client.call("nats:w.1", "a.b", b""), WAIT)
    await client.close()


_WORKER = """
import asyncio, sys
from dyntriton_transport_nats.connection import NatsSettings
from dyntriton_transport_nats.transport import NatsTransport

async def handler(request):
    yield b"started:" + bytes(request.payload)
    await asyncio.sleep(3600)

async def main():
    server = NatsTransport(NatsSettings(servers=(sys.argv[1],)), subject_prefix="killed").server()
    print(await server.start(handler), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_sigkilled_worker_fails_every_call_in_flight(nats_server: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER, nats_server, stdout=asyncio.subprocess.PIPE
    )
    client = transport(nats_server, heartbeat=0.4).client()
    try:
        address = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()
        assert address.startswith("nats:killed.")
        streams = [client.call(address, "infer", b"%d" % i).__aiter__() for i in range(4)]
        firsts = await asyncio.wait_for(asyncio.gather(*(s.__anext__() for s in streams)), WAIT)
        assert [bytes(f) for f in firsts] == [b"started:%d" % i for i in range(4)]
        proc.send_signal(signal.SIGKILL)
        for stream in streams:
            with pytest.raises(PeerGoneError) as caught:
                await asyncio.wait_for(stream.__anext__(), WAIT)
            assert address in str(caught.value)
        await proc.wait()
        with pytest.raises(PeerGoneError, match="no worker listens"):
            await collect(client.call(address, "infer", b""), WAIT)
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_silent_worker_is_unresponsive_and_its_calls_end(nats_server: str) -> None:
    # Subscribed (so no 503), but reads and answers nothing, not even probes: a hung process.
    import nats

    nc = await nats.connect(nats_server)
    await nc.subscribe("silent.worker.>")
    await nc.flush()
    client = transport(nats_server, heartbeat=0.4).client()
    try:
        with pytest.raises(DeadlineExceededError):
            await collect(client.call("nats:silent.worker", "x", b"", timeout=0.2), WAIT)
        with pytest.raises(PeerUnresponsiveError, match=r"stopped answering .* before it read the request") as caught:
            await collect(client.call("nats:silent.worker", "x", b""), WAIT)
        assert caught.value.started is False
        assert client.unresponsive("nats:silent.worker")
        with pytest.raises(PeerUnresponsiveError, match="is unresponsive"):
            await collect(client.call("nats:silent.worker", "x", b""), WAIT)
    finally:
        await client.close()
        await nc.close()


async def test_an_upload_longer_than_the_heartbeat_is_not_silence(nats_server: str) -> None:
    # 128 MiB in 8 KiB messages takes many heartbeats to arrive: the worker says it is receiving.
    # An 80 ms heartbeat: the upload is many heartbeats long (~0.5 s), and a busy 2-core host that schedules
    # the worker tens of ms late does not look like silence (30 ms did: 5 failures in 27 loaded runs).
    nats = transport(nats_server, heartbeat=0.08, max_chunk=8 * 1024)
    server = nats.server()
    address = await server.start(echo_length)
    client = nats.client()
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await collect(client.call(address, "x", bytes(128 * MiB)), WAIT) == [b"%d" % (128 * MiB)]
        took = loop.time() - began
        assert took > 3 * nats.heartbeat, f"the upload took {took:.2f} s: too fast to test anything here"
        assert not client.unresponsive(address)
    finally:
        await client.close()
        await server.stop(grace=0)


async def echo_length(request: TransportRequest) -> AsyncIterator[bytes]:
    yield b"%d" % len(request.payload)


async def test_credentials_are_used_and_a_refusal_says_which(tmp_path: Path) -> None:
    with run_nats(tmp_path, extra_args=["--user", "dyn", "--pass", "s3cret"]) as server:
        good = NatsSettings(servers=(server.url,), user="dyn", password="s3cret")
        nats = NatsTransport(settings=good, subject_prefix="auth")
        assert await round_trip(nats, echo, b"in") == [b"in"]
        bad = NatsTransport(settings=NatsSettings(servers=(server.url,), user="dyn", password="wrong"))
        with pytest.raises(TransportError) as caught:
            await bad.server().start(echo)
        assert caught.value.status == "UNAUTHENTICATED"
        assert "NATS_USER" in str(caught.value.hint)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make test certs")
async def test_mutual_tls(tmp_path: Path) -> None:
    make_certs(tmp_path)  # ca.pem, server.pem/.key, client.pem/.key
    tls = ["--tlsverify", "--tlscert", str(tmp_path / "server.pem"), "--tlskey", str(tmp_path / "server.key")]
    tls += ["--tlscacert", str(tmp_path / "ca.pem")]
    with run_nats(tmp_path / "nats", extra_args=tls) as server:
        url = server.url.replace("nats://", "tls://")
        settings = NatsSettings(
            servers=(url,),
            ca_file=str(tmp_path / "ca.pem"),
            cert_file=str(tmp_path / "client.pem"),
            key_file=str(tmp_path / "client.key"),
        )
        assert await round_trip(NatsTransport(settings=settings, subject_prefix="tls"), echo, b"sealed") == [b"sealed"]
        no_cert = NatsTransport(settings=NatsSettings(servers=(url,), ca_file=str(tmp_path / "ca.pem"), timeout=2))
        with pytest.raises(TransportError, match=re.escape("NATS at tls://127.0.0.1")):
            await no_cert.server().start(echo)


def test_missing_nats_py_gives_the_pip_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(PluginError) as caught:
        make_plugin_manager().transport("nats")
    assert "pip install 'dynamo-triton[nats]'" in str(caught.value)
