"""The tcp transport's server: one task per request, many requests per connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from dynamo_triton.errors import DyntritonError
from dynamo_triton.transport import Chunk, Handler, TransportRequest
from dyntriton_transport_tcp.frames import (
    HEADER,
    Frame,
    FrameType,
    encode_error,
    simple_frame,
    tune_socket,
    write_frame,
)
from dyntriton_transport_tcp.protocol import FrameProtocol

__all__ = ["TcpServer", "advertised_host"]

log = logging.getLogger(__name__)


def advertised_host(bound: str, explicit: str | None) -> str:
    """The host clients should dial: ``explicit`` if given, else ``bound`` unless it is a wildcard."""
    if explicit:
        return explicit
    if bound not in ("", "0.0.0.0", "::"):
        return bound
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()


class _Connection:
    """One accepted connection: runs a handler task per REQUEST frame, cancels it on CANCEL."""

    def __init__(self, server: TcpServer):
        self.server = server
        self.writer: asyncio.StreamWriter
        self.tasks: dict[int, asyncio.Task[None]] = {}

    def on_frame(self, frame: Frame) -> None:
        if frame.type is FrameType.REQUEST:
            if self.server.stopping:
                write_frame(self.writer, simple_frame(FrameType.GONE, frame.request_id, self.server.stopping_error()))
                return
            task = asyncio.create_task(self._run(frame))
            self.tasks[frame.request_id] = task
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        elif frame.type is FrameType.CANCEL:
            running = self.tasks.get(frame.request_id)
            if running is not None:
                running.cancel()

    def on_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, DyntritonError):
            log.warning("closed tcp connection from %s: %s", self.peer, exc)
        # the client went away: nobody waits for these requests any more
        for task in list(self.tasks.values()):
            task.cancel()
        self.server.connections.discard(self)

    @property
    def peer(self) -> str:
        return str(self.writer.get_extra_info("peername"))

    async def _send(self, kind: FrameType, request_id: int, body: Chunk = b"") -> None:
        frame = simple_frame(kind, request_id, body)
        size = HEADER.unpack(frame[0])[2]
        if size > self.server.max_frame:
            raise DyntritonError(
                f"response of {size} bytes exceeds the tcp frame limit of {self.server.max_frame} bytes",
                status="RESOURCE_EXHAUSTED",
                hint="raise max_frame_size (DYNTRITON_TCP_MAX_FRAME)",
            )
        write_frame(self.writer, frame)
        await self.writer.drain()

    async def _run(self, frame: Frame) -> None:
        rid = frame.request_id
        request = TransportRequest(frame.endpoint, frame.body, frame.timeout)
        try:
            try:
                async with asyncio.timeout(frame.timeout) as deadline:
                    stream = self.server.handler(request)
                    try:
                        async for chunk in stream:
                            await self._send(FrameType.DATA, rid, chunk)
                    finally:
                        aclose = getattr(stream, "aclose", None)
                        if aclose is not None:
                            await aclose()
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                message = f"deadline of {frame.timeout} s exceeded on the server for endpoint {frame.endpoint!r}"
                raise DyntritonError(message, status="DEADLINE_EXCEEDED") from exc
            await self._send(FrameType.END, rid)
        except asyncio.CancelledError:
            if self.server.stopping:
                with contextlib.suppress(ConnectionError, OSError):
                    await self._send(FrameType.GONE, rid, self.server.stopping_error())
            raise
        except (ConnectionError, OSError):
            pass  # the client is gone; nobody to tell
        except DyntritonError as exc:
            await self._send_error(rid, exc.status, str(exc))
        except Exception as exc:
            log.exception("handler for endpoint %r failed", frame.endpoint)
            await self._send_error(rid, "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            self.tasks.pop(rid, None)

    async def _send_error(self, rid: int, status: str, message: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._send(FrameType.ERROR, rid, encode_error(status, message))


class TcpServer:
    """Serves a handler on ``host``:``port``; see :class:`dynamo_triton.transport.TransportServer`.

    :param advertise_host: host put in the advertised address instead of the bound one.
    :param max_frame: largest frame accepted or sent, in bytes.
    """

    def __init__(self, host: str, port: int, *, advertise_host: str | None, max_frame: int):
        self.host, self.port, self.advertise_host, self.max_frame = host, port, advertise_host, max_frame
        self.handler: Handler
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.address = ""
        self._server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()

    async def start(self, handler: Handler) -> str:
        """Bind and start accepting; returns ``tcp://HOST:PORT``."""
        self.handler = handler
        self._server = await asyncio.get_running_loop().create_server(self._accept, self.host, self.port)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"tcp://{advertised_host(self.host, self.advertise_host)}:{port}"
        return self.address

    def stopping_error(self) -> bytes:
        return f"the server at {self.address} is shutting down".encode()

    def _accept(self) -> FrameProtocol:
        connection = _Connection(self)
        server = self

        class _Protocol(FrameProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                loop = asyncio.get_running_loop()
                connection.writer = asyncio.StreamWriter(transport, self, None, loop)  # type: ignore[arg-type]
                tune_socket(connection.writer)
                server.connections.add(connection)

        return _Protocol(connection.on_frame, connection.on_lost, self.max_frame)

    def abort(self) -> None:
        """Drop the listening socket and every connection at once, like a crash (handlers are cancelled)."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.writer.transport.abort()
        self._server = None

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop accepting, wait up to ``grace`` s for in-flight requests, cancel the rest and close."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        pending = set(self.tasks)
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        pending = {task for task in self.tasks if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        for connection in list(self.connections):
            connection.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self._server = None
