"""The tcp transport's server: one task per request, many requests per connection.

A connection is served once it is trusted: with TLS, after the handshake (a task per
connection); with a token, after the client answered the challenge (frames other than AUTH
are refused before that). Each refused connection is one WARNING line saying why and what
the other side must configure. PING is answered from the protocol callback itself, so a
worker whose handlers are all busy still answers heartbeats; only a frozen or stuck process
(its event loop not running) goes silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import ssl
from collections.abc import Awaitable

from dynamo_triton.errors import DyntritonError, TransportError
from dynamo_triton.request_runner import run_request
from dynamo_triton.transport import Chunk, Handler, TransportRequest
from dyntriton_transport_tcp.frames import (
    ACK_BODY,
    HEADER,
    Frame,
    FrameType,
    encode_error,
    simple_frame,
    tune_socket,
    write_frame,
)
from dyntriton_transport_tcp.protocol import FrameProtocol
from dyntriton_transport_tcp.security import answer, new_challenge, tls_refusal

__all__ = ["HANDSHAKE_TIMEOUT", "TcpServer", "advertised_host"]

log = logging.getLogger(__name__)

#: Seconds a new connection has to finish TLS and prove it holds the token.
HANDSHAKE_TIMEOUT = 10.0
_PONG = HEADER.pack(FrameType.PONG, 0, 0)
_ACCEPTED = HEADER.pack(FrameType.AUTH, 0, 0)
_ACK = HEADER.pack(FrameType.ACK, 0, ACK_BODY.size)


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


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
    """One accepted connection: runs a handler task per REQUEST frame, cancels it on CANCEL.

    It is the :class:`~dynamo_triton.request_runner.Replier` of its requests (keyed by request id).
    """

    lost: tuple[type[BaseException], ...] = (ConnectionError, OSError)

    def __init__(self, server: TcpServer):
        self.server = server
        self.protocol: FrameProtocol
        self.writer: asyncio.StreamWriter
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.peer = "?"
        self.challenge: bytes | None = None  # set until the client proved it holds the token
        self.refused = False
        self.last_read = 0  # highest REQUEST id read
        self.ack_due = False
        self._timer: asyncio.TimerHandle | None = None

    def open(self, transport: asyncio.BaseTransport) -> None:
        """Serve ``transport`` (after TLS, if any): ask for the token first when there is one."""
        loop = asyncio.get_running_loop()
        self.protocol.transport = transport  # type: ignore[assignment]
        self.writer = asyncio.StreamWriter(transport, self.protocol, None, loop)  # type: ignore[arg-type]
        tune_socket(self.writer)
        self.server.connections.add(self)
        if self.server.frozen:
            self.pause()
        if self.server.token is not None:
            self.challenge = new_challenge()
            self.protocol.gate = self._gate
            write_frame(self.writer, simple_frame(FrameType.CHALLENGE, 0, self.challenge))
            self._timer = loop.call_later(HANDSHAKE_TIMEOUT, self._too_slow)

    def pause(self) -> None:
        """Stop reading, now and once the loop has started reading a new connection (uvloop does it after open)."""
        self._pause_if_frozen()
        asyncio.get_running_loop().call_soon(self._pause_if_frozen)

    def _pause_if_frozen(self) -> None:
        transport = self.protocol.transport
        if self.server.frozen and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume(self) -> None:
        transport = self.protocol.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _gate(self, kind: FrameType, length: int) -> None:
        if (kind is FrameType.AUTH and length <= 64) or (kind is FrameType.PING and length == 0):
            return
        raise TransportError(
            f"no token (its first frame was {kind.name}, not the answer to the token challenge): "
            "frontends need this worker's --transport-token (DYN_TRANSPORT_TOKEN)"
        )

    def _too_slow(self) -> None:
        if self.challenge is not None:
            self.refuse(f"no answer to the token challenge within {HANDSHAKE_TIMEOUT:g} s")

    def refuse(self, reason: str) -> None:
        """Log why once, tell the client, close."""
        self.refused = True
        log.warning("refused tcp connection from %s: %s", self.peer, reason)
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            write_frame(self.writer, simple_frame(FrameType.ERROR, 0, encode_error("UNAUTHENTICATED", reason)))
        self.writer.close()

    def _authenticate(self, proof: bytes | memoryview) -> None:
        challenge, token = self.challenge, self.server.token
        if challenge is None or token is None:
            return  # already accepted
        if not proof:
            self.refuse("no token: frontends need this worker's --transport-token (DYN_TRANSPORT_TOKEN)")
            return
        if not hmac.compare_digest(bytes(proof), answer(token, challenge)):
            self.refuse("wrong token: frontends need the same --transport-token (DYN_TRANSPORT_TOKEN) as this worker")
            return
        self.challenge = None
        self.protocol.gate = None
        if self._timer is not None:
            self._timer.cancel()
        self.writer.write(_ACCEPTED)

    def on_frame(self, frame: Frame) -> None:
        if frame.type is FrameType.REQUEST:
            rid = frame.request_id
            if self.server.stopping:
                write_frame(self.writer, simple_frame(FrameType.GONE, rid, self.server.stopping_error()))
                return
            self.last_read = rid
            if not self.ack_due:
                # Scheduled before the handler's task, so the ACK is written before any handler runs.
                self.ack_due = True
                asyncio.get_running_loop().call_soon(self._ack)
            request = TransportRequest(frame.endpoint, frame.body, frame.timeout)
            task = asyncio.create_task(run_request(self.server.handler, request, rid, self))
            self.tasks[rid] = task
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        elif frame.type is FrameType.CANCEL:
            running = self.tasks.get(frame.request_id)
            if running is not None:
                running.cancel()
        elif frame.type is FrameType.PING:
            self.writer.write(_PONG)
        elif frame.type is FrameType.AUTH:
            self._authenticate(frame.body)

    def _ack(self) -> None:
        self.ack_due = False
        if not self.writer.transport.is_closing():
            self.writer.write(_ACK + ACK_BODY.pack(self.last_read))

    def on_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.challenge is not None and not self.refused:
            if isinstance(exc, DyntritonError):
                log.warning("refused tcp connection from %s: %s", self.peer, exc)
            else:
                log.debug("tcp connection from %s closed before it proved it holds the token", self.peer)
        elif isinstance(exc, DyntritonError):
            log.warning("closed tcp connection from %s: %s", self.peer, exc)
        # the client went away: nobody waits for these requests any more
        for task in list(self.tasks.values()):
            task.cancel()
        self.server.connections.discard(self)

    # -- answers (the Replier of dynamo_triton.request_runner) -----------------------------------
    @property
    def stopping(self) -> bool:
        return self.server.stopping

    def _write(self, kind: FrameType, request_id: int, body: Chunk = b"") -> None:
        frame = simple_frame(kind, request_id, body)
        size = HEADER.unpack(frame[0])[2]
        if size > self.server.max_frame:
            raise DyntritonError(
                f"response of {size} bytes exceeds the tcp frame limit of {self.server.max_frame} bytes",
                status="RESOURCE_EXHAUSTED",
                hint="raise max_frame_size (DYNTRITON_TCP_MAX_FRAME)",
            )
        write_frame(self.writer, frame)

    def data(self, request_id: int, chunk: Chunk) -> Awaitable[None]:
        self._write(FrameType.DATA, request_id, chunk)
        return self.writer.drain()

    async def end(self, request_id: int) -> None:
        self._write(FrameType.END, request_id)
        await self.writer.drain()

    async def error(self, request_id: int, status: str, message: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._write(FrameType.ERROR, request_id, encode_error(status, message))
            await self.writer.drain()

    async def gone(self, request_id: int) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._write(FrameType.GONE, request_id, self.server.stopping_error())
            await self.writer.drain()

    def finished(self, request_id: int) -> None:
        self.tasks.pop(request_id, None)


class TcpServer:
    """Serves a handler on ``host``:``port``; see :class:`dynamo_triton.transport.TransportServer`.

    :param advertise_host: host put in the advertised address instead of the bound one.
    :param max_frame: largest frame accepted or sent, in bytes.
    :param tls: a server context requiring client certificates (mutual TLS), or None for plain tcp.
    :param token: the shared secret clients must prove they hold, or None.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        advertise_host: str | None,
        max_frame: int,
        tls: ssl.SSLContext | None = None,
        token: bytes | None = None,
    ):
        self.host, self.port, self.advertise_host, self.max_frame = host, port, advertise_host, max_frame
        self.tls, self.token = tls, token
        self.handler: Handler
        self.stopping = False
        self.frozen = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.address = ""
        self._server: asyncio.Server | None = None
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[None]] = set()
        self.connections: set[_Connection] = set()

    @property
    def _serving(self) -> bool:
        return self._server is not None or self._listener is not None

    async def start(self, handler: Handler) -> str:
        """Bind and start accepting; returns ``tcp://HOST:PORT``."""
        self.handler = handler
        loop = asyncio.get_running_loop()
        if self.tls is None:
            self._server = await loop.create_server(self._accept, self.host, self.port)
            port = self._server.sockets[0].getsockname()[1]
        else:
            # Our own accept loop: connect_accepted_socket reports each failed handshake to us,
            # where a TLS server made by create_server drops it without a word.
            self._listener = socket.create_server((self.host, self.port), backlog=1024)
            self._listener.setblocking(False)
            self._acceptor = asyncio.create_task(self._accept_tls(), name=f"dyntriton-tcp-accept-{self.port}")
            port = self._listener.getsockname()[1]
        self.address = f"tcp://{advertised_host(self.host, self.advertise_host)}:{port}"
        return self.address

    def stopping_error(self) -> bytes:
        return f"the server at {self.address} is shutting down".encode()

    def _accept(self) -> FrameProtocol:
        connection = _Connection(self)

        class _Protocol(FrameProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                connection.peer = _peer_name(transport)
                connection.open(transport)

        connection.protocol = _Protocol(connection.on_frame, connection.on_lost, self.max_frame)
        return connection.protocol

    async def _accept_tls(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as exc:
                log.warning("tcp server %s: accept failed (%s)", self.address, exc)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._handshake(sock, peer))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, peer: object) -> None:
        assert self.tls is not None
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self._accept, sock, ssl=self.tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except asyncio.CancelledError:
            sock.close()
            raise
        except (ssl.SSLError, TimeoutError) as exc:
            sock.close()
            log.warning("refused tcp connection from %s: %s", name, tls_refusal(exc))
        except (ConnectionError, OSError) as exc:
            sock.close()
            log.debug("tcp connection from %s closed during the TLS handshake (%s)", name, exc)

    def _close_listeners(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.cancel()
        for handshake in list(self._handshakes):
            handshake.cancel()
        if self._listener is not None:
            self._listener.close()

    def abort(self) -> None:
        """Drop the listening socket and every connection at once, like a crash (handlers are cancelled)."""
        if not self._serving:
            return
        self._close_listeners()
        for connection in list(self.connections):
            connection.writer.transport.abort()
        self._server = self._listener = None

    def freeze(self) -> None:
        """Read nothing more, on every connection and on those accepted from now on, like a stopped process.

        For tests of liveness: connections stay open (the kernel still accepts new ones for a
        SIGSTOPped process) but no frame is read or answered until :meth:`thaw`.
        """
        self.frozen = True
        for connection in self.connections:
            connection.pause()

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        self.frozen = False
        for connection in self.connections:
            connection.resume()

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop accepting, wait up to ``grace`` s for in-flight requests, cancel the rest and close."""
        if not self._serving:
            return
        self.stopping = True
        self._close_listeners()
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
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self._server = self._listener = None
