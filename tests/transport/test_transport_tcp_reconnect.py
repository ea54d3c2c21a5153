"""tcp after a network cut: the client probes with fresh connections and leaves the stalled one behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import pytest
from dyntriton_transport_tcp.transport import TcpTransport

from dynamo_triton.errors import DeadlineExceededError, PeerUnresponsiveError
from dynamo_triton.testing.transport_contract import collect
from dynamo_triton.transport import TransportRequest

WAIT = 10.0
HEARTBEAT = 0.3


class _Cable:
    """A tcp proxy standing for the network between a client and a worker; it can be cut and mended.

    ``cut()``: every connection made so far stops forwarding and reading in both directions,
    and connections made while cut are accepted but never forwarded (a peer's kernel answers
    the handshake, nothing more). ``mend()``: new connections are forwarded again; the ones
    from before stay black-holed, like a connection whose next retransmission is still far off.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.address = ""
        self.accepted = 0
        self.is_cut = False
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> _Cable:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"tcp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._changed.set()
        self._writers.append(writer)
        if self.is_cut:
            writer.transport.pause_reading()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    def cut(self) -> None:
        self.is_cut = True
        for pump in list(self._pumps):
            pump.cancel()
        for writer in self._writers:
            writer.transport.pause_reading()

    def mend(self) -> None:
        self.is_cut = False

    async def wait_accepted(self, count: int) -> None:
        """Return once ``count`` connections were accepted in all."""
        while self.accepted < count:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), WAIT)

    async def close(self) -> None:
        for pump in list(self._pumps):
            pump.cancel()
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture(params=[None, "s3cret"], ids=["plain", "token"])
def transport(request: pytest.FixtureRequest) -> TcpTransport:
    return TcpTransport(heartbeat=HEARTBEAT, token=request.param)


async def test_a_worker_cut_off_answers_again_on_a_fresh_connection_soon_after_the_cut_mends(
    transport: TcpTransport,
) -> None:
    calls: collections.Counter[bytes] = collections.Counter()
    read = asyncio.Event()

    async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
        calls[bytes(request.payload)] += 1
        if request.payload == b"slow":
            read.set()
            await asyncio.sleep(3600)  # its answer is lost in the cut anyway; its deadline ends it
        yield request.payload

    server = transport.server("127.0.0.1", 0)
    upstream = await server.start(handler)
    cable = await _Cable(int(upstream.rsplit(":", 1)[1])).start()
    client = transport.client()
    loop = asyncio.get_running_loop()
    address = cable.address
    try:
        assert await collect(client.call(address, "x", b"before"), WAIT) == [b"before"]
        old = client._connections[address]
        # Read by the worker before the cut: it keeps its deadline, on the old connection.
        slow = asyncio.create_task(collect(client.call(address, "x", b"slow", timeout=8 * HEARTBEAT), WAIT))
        await asyncio.wait_for(read.wait(), WAIT)

        cable.cut()
        # Sent into the cut: never read, so it fails at detection, and the caller may retry it.
        with pytest.raises(PeerUnresponsiveError) as caught:
            await collect(client.call(address, "x", b"lost", timeout=WAIT), WAIT)
        detected = loop.time()
        assert caught.value.started is False and client.unresponsive(address)
        # A probe at detection, then one per heartbeat, none of which gets an answer while cut.
        await cable.wait_accepted(1 + 3)
        assert loop.time() - detected >= 2 * HEARTBEAT - 0.05, "probes are one per heartbeat"
        assert client.unresponsive(address)

        cable.mend()
        mended = loop.time()
        while client.unresponsive(address):
            assert loop.time() - mended < WAIT, "still unresponsive after the cut mended"
            await asyncio.sleep(0.01)
        back_after = loop.time() - mended
        assert back_after <= 2 * HEARTBEAT + 0.2, f"answered {back_after:.2f} s after the cut mended"
        assert client._connections[address] is not old and old.retired and old.failure is None

        assert await collect(client.call(address, "x", b"lost"), WAIT) == [b"lost"]  # the caller's retry
        assert await collect(client.call(address, "x", b"after"), WAIT) == [b"after"]
        with pytest.raises(DeadlineExceededError):
            await slow
        # Its last call ended: the old connection is reset within a tick, its queued bytes dropped.
        while old.failure is None:
            assert loop.time() - mended < WAIT, "the retired connection was never closed"
            await asyncio.sleep(0.01)
        assert old not in client._retired
        assert calls == {b"before": 1, b"slow": 1, b"lost": 1, b"after": 1}, "no request ran twice"
    finally:
        await client.close()
        await cable.close()
        await server.stop(grace=0)
