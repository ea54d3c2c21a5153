"""The tcp transport's client: one lazily opened, shared connection per address."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from dynamo_triton.errors import DeadlineExceededError, PeerGoneError, TransportError, error_from_status
from dyntriton_transport_tcp.frames import (
    Frame,
    FrameType,
    decode_error,
    request_frame,
    simple_frame,
    tune_socket,
    write_frame,
)
from dyntriton_transport_tcp.protocol import FrameProtocol

__all__ = ["TcpClient", "parse_address"]


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` from ``tcp://HOST:PORT``; raises TransportError otherwise."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if rest == address or not sep or not port.isdigit():
        raise TransportError(f"bad tcp address {address!r}; expected 'tcp://HOST:PORT'")
    return host.strip("[]"), int(port)


class _Connection:
    """A client connection: its protocol routes frames to each call's queue by request id."""

    def __init__(self, address: str):
        self.address = address
        self.writer: asyncio.StreamWriter
        self.queues: dict[int, asyncio.Queue[Frame | PeerGoneError]] = {}
        self.ids = itertools.count(1)
        self.failure: PeerGoneError | None = None

    def on_frame(self, frame: Frame) -> None:
        queue = self.queues.get(frame.request_id)
        if queue is not None:  # else the call was cancelled; drop its late responses
            queue.put_nowait(frame)

    def on_lost(self, exc: BaseException | None) -> None:
        if exc is None:
            self.fail("closed the connection")
        elif isinstance(exc, TransportError):
            self.fail(f"broke the protocol ({exc})")
        else:
            self.fail(f"reset the connection ({exc})")

    def fail(self, reason: str) -> None:
        """Mark the connection dead and fail every call in flight on it at once."""
        if self.failure is None:
            self.failure = PeerGoneError(
                f"the peer at {self.address} {reason}",
                hint="the worker probably stopped or crashed; retry on another instance",
            )
        for queue in self.queues.values():
            queue.put_nowait(self.failure)
        self.writer.close()

    async def send(self, buffers: list) -> None:
        if self.failure is not None:
            raise self.failure
        try:
            write_frame(self.writer, buffers)
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self.fail(f"reset the connection ({exc})")
            raise PeerGoneError(f"the peer at {self.address} reset the connection ({exc})") from exc

    async def close(self) -> None:
        self.fail("was disconnected by this client's close()")


class TcpClient:
    """Sends requests to ``tcp://`` addresses; see :class:`dynamo_triton.transport.TransportClient`.

    :param connect_timeout: seconds to wait for a connection before PeerGoneError.
    :param max_frame: largest frame accepted or sent, in bytes.
    """

    def __init__(self, *, connect_timeout: float, max_frame: int):
        self.connect_timeout, self.max_frame = connect_timeout, max_frame
        self._connections: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Task[_Connection]] = {}

    async def _connection(self, address: str) -> _Connection:
        connection = self._connections.get(address)
        if connection is not None and connection.failure is None:
            return connection
        task = self._connecting.get(address)
        if task is None:
            task = asyncio.create_task(self._connect(address))
            self._connecting[address] = task
            task.add_done_callback(lambda done: self._connected(address, done))
        # shield: one caller cancelling must not abort the connect others wait on
        return await asyncio.shield(task)

    def _connected(self, address: str, task: asyncio.Task[_Connection]) -> None:
        self._connecting.pop(address, None)
        if not task.cancelled():
            task.exception()  # retrieved here: the callers that gave up (deadline) no longer await it

    async def _connect(self, address: str) -> _Connection:
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        connection = _Connection(address)
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: FrameProtocol(connection.on_frame, connection.on_lost, self.max_frame), host, port
                ),
                self.connect_timeout,
            )
        except TimeoutError as exc:
            raise PeerGoneError(
                f"cannot connect to {address}: no answer within {self.connect_timeout} s",
                hint="the worker is down or unreachable; check the address it advertised",
            ) from exc
        except OSError as exc:
            raise PeerGoneError(
                f"cannot connect to {address}: {exc.strerror or exc}",
                hint="the worker is down or unreachable; check the address it advertised",
            ) from exc
        connection.writer = asyncio.StreamWriter(transport, protocol, None, loop)
        tune_socket(connection.writer)
        self._connections[address] = connection
        return connection

    async def call(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """Send one request to ``address`` and yield each response payload; see the transport contract."""
        if memoryview(payload).nbytes > self.max_frame - 1024:
            raise TransportError(
                f"request of {len(payload)} bytes exceeds the tcp frame limit of {self.max_frame} bytes",
                hint="raise max_frame_size (DYNTRITON_TCP_MAX_FRAME) on both sides",
            )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._connection(address)
        except TimeoutError:
            raise DeadlineExceededError(
                f"deadline of {timeout} s exceeded while connecting to {address} (endpoint {endpoint!r})"
            ) from None
        rid = next(connection.ids)
        queue: asyncio.Queue[Frame | PeerGoneError] = asyncio.Queue()
        connection.queues[rid] = queue
        finished = False
        try:
            await connection.send(request_frame(rid, endpoint, payload, timeout))
            while True:
                try:
                    if queue.empty():
                        async with asyncio.timeout_at(deadline):
                            item = await queue.get()
                    else:
                        item = queue.get_nowait()
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"deadline of {timeout} s exceeded waiting for {address} (endpoint {endpoint!r})"
                    ) from None
                if isinstance(item, PeerGoneError):
                    finished = True
                    raise PeerGoneError(str(item.message), hint=item.hint)
                if item.type is FrameType.DATA:
                    yield item.body
                elif item.type is FrameType.END:
                    finished = True
                    return
                elif item.type is FrameType.ERROR:
                    finished = True
                    raise error_from_status(*decode_error(item.body))
                elif item.type is FrameType.GONE:
                    finished = True
                    raise PeerGoneError(item.body.decode(errors="replace"), hint="retry on another instance")
        finally:
            connection.queues.pop(rid, None)
            if not finished and connection.failure is None:
                # Best effort: the CANCEL frame is tiny, so write it without waiting for drain.
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    write_frame(connection.writer, simple_frame(FrameType.CANCEL, rid))

    async def close(self) -> None:
        """Close every connection; calls in flight raise PeerGoneError."""
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            await connection.close()
