"""tcp-only behaviour: a worker process killed mid-request, reconnects, addresses, frame limits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from dyntriton_transport_tcp.transport import TcpTransport

from dynamo_triton.errors import DeadlineExceededError, PeerGoneError, PeerUnresponsiveError, TransportError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.transport_contract import collect, echo
from dynamo_triton.transport import TransportRequest

WAIT = 10.0

# A worker process: answers once, then blocks until killed.
_WORKER = """
import asyncio, sys
from dyntriton_transport_tcp.transport import TcpTransport

async def handler(request):
    yield b"started:" + request.payload
    await asyncio.sleep(3600)

async def main():
    server = TcpTransport().server("127.0.0.1", 0)
    print(await server.start(handler), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
async def client() -> AsyncIterator:
    client = make_plugin_manager().transport("tcp").client()
    yield client
    await client.close()


async def test_sigkilled_worker_fails_every_call_in_flight(client) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _WORKER, stdout=asyncio.subprocess.PIPE)
    try:
        address = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()
        assert address.startswith("tcp://127.0.0.1:")
        streams = [client.call(address, "infer", b"%d" % i).__aiter__() for i in range(4)]
        firsts = await asyncio.wait_for(asyncio.gather(*(s.__anext__() for s in streams)), WAIT)
        assert [bytes(f) for f in firsts] == [b"started:%d" % i for i in range(4)]
        proc.send_signal(signal.SIGKILL)
        for stream in streams:
            with pytest.raises(PeerGoneError) as caught:
                await asyncio.wait_for(stream.__anext__(), WAIT)
            assert address in str(caught.value)
        # The kernel may still be tearing the process's sockets down: refused or reset, never a hang.
        await proc.wait()
        with pytest.raises(PeerGoneError) as caught:
            await collect(client.call(address, "infer", b""), WAIT)
        assert address in str(caught.value)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


_ECHO_WORKER = """
import asyncio
from dyntriton_transport_tcp.transport import TcpTransport

async def echo(request):
    yield request.payload

async def main():
    server = TcpTransport().server("127.0.0.1", 0)
    print(await server.start(echo), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_sigstopped_worker_is_unresponsive_within_the_heartbeat_and_back_after_sigcont() -> None:
    """A real frozen process: its connection stays open, only the heartbeat tells."""
    heartbeat = 0.5
    client = TcpTransport(heartbeat=heartbeat).client()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _ECHO_WORKER, stdout=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    try:
        address = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()
        assert await collect(client.call(address, "x", b"1"), WAIT) == [b"1"]
        proc.send_signal(signal.SIGSTOP)
        stopped = loop.time()
        # Sent after the freeze: never read, so it fails at detection (not at its 30 s deadline).
        with pytest.raises(PeerUnresponsiveError) as caught:
            await collect(client.call(address, "x", b"2", timeout=30.0), WAIT)
        detected = loop.time() - stopped
        assert caught.value.started is False and client.unresponsive(address)
        assert heartbeat <= detected <= 2 * heartbeat + 0.3, detected
        proc.send_signal(signal.SIGCONT)
        while client.unresponsive(address):
            assert loop.time() - stopped < WAIT, "still unresponsive after SIGCONT"
            await asyncio.sleep(0.02)
        assert await collect(client.call(address, "x", b"3"), WAIT) == [b"3"]
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await proc.wait()
        await client.close()


async def test_connection_is_reused_and_recreated_after_failure(client) -> None:
    transport = TcpTransport()
    server = transport.server("127.0.0.1", 0)
    address = await server.start(echo)
    port = int(address.rsplit(":", 1)[1])
    assert await collect(client.call(address, "x", b"1"), WAIT) == [b"1"]
    first = client._connections[address]
    assert await collect(client.call(address, "x", b"2"), WAIT) == [b"2"]
    assert client._connections[address] is first, "one connection per address, reused"
    server.abort()
    with pytest.raises(PeerGoneError):
        await collect(client.call(address, "x", b"3"), WAIT)
    again = transport.server("127.0.0.1", port)
    assert await again.start(echo) == address
    try:
        assert await collect(client.call(address, "x", b"4"), WAIT) == [b"4"]
        assert client._connections[address] is not first
    finally:
        await again.stop(grace=0)


async def test_wildcard_bind_advertises_a_routable_host() -> None:
    server = TcpTransport().server("0.0.0.0", 0)
    address = await server.start(echo)
    await server.stop(grace=0)
    assert address.startswith("tcp://") and "0.0.0.0" not in address
    explicit = TcpTransport(advertise_host="worker-7.example").server("0.0.0.0", 0)
    address = await explicit.start(echo)
    await explicit.stop(grace=0)
    assert address.startswith("tcp://worker-7.example:")


async def test_frames_over_the_limit_are_refused_with_a_clear_error() -> None:
    transport = TcpTransport(max_frame_size=64 * 1024)
    server = transport.server("127.0.0.1", 0)

    async def big_answer(request: TransportRequest) -> AsyncIterator[bytes]:
        yield b"x" * (128 * 1024)

    address = await server.start(big_answer)
    client = transport.client()
    try:
        with pytest.raises(TransportError, match="frame limit"):
            await collect(client.call(address, "x", b"y" * (128 * 1024)), WAIT)
        with pytest.raises(Exception, match="frame limit") as caught:
            await collect(client.call(address, "x", b"small"), WAIT)
        assert getattr(caught.value, "status", None) == "RESOURCE_EXHAUSTED"
    finally:
        await client.close()
        await server.stop(grace=0)


async def test_bad_addresses_are_named(client) -> None:
    with pytest.raises(TransportError, match="expected 'tcp://HOST:PORT'"):
        await collect(client.call("inproc://abc", "x", b""), WAIT)


async def test_deadline_holds_when_the_server_never_answers(client) -> None:
    # A peer that accepts and then says nothing (a stuck process): only the deadline ends the call.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DeadlineExceededError):
            await collect(client.call(f"tcp://127.0.0.1:{port}", "x", b"", timeout=0.2), WAIT)
    finally:
        listener.close()
        for writer in accepted:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
def unanswered_address() -> Iterator[str]:
    """An address whose SYNs go unanswered: a listener with a full backlog that never accepts (Linux)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield f"tcp://127.0.0.1:{port}"
    for sock in [*fillers, listener]:
        sock.close()


async def test_connect_timeout_is_bounded(unanswered_address: str) -> None:
    client = TcpTransport(connect_timeout=0.3).client()
    try:
        with pytest.raises(PeerGoneError, match=r"no answer within 0.3 s"):
            await collect(client.call(unanswered_address, "x", b""), WAIT)
        with pytest.raises(DeadlineExceededError, match="while connecting"):
            await collect(client.call(unanswered_address, "x", b"", timeout=0.1), WAIT)
    finally:
        await client.close()
