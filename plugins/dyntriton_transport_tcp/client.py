"""The tcp transport's client: one lazily opened, shared connection per address, watched by heartbeats.

Liveness costs nothing per request: each connection has one timer chain, ticking every
``heartbeat / 4`` s. A sign of life is any byte received, or bytes the peer took off this
side's send buffer. After a quiet tick the client sends PING (the server's protocol answers
PONG at once); after ``heartbeat`` s without a sign of life the peer is *unresponsive*
(a frozen or stuck process: a crashed one closes its connections instead):

- calls the peer has not read (request id above its last ACK) fail at once with
  PeerUnresponsiveError(started=False), and their CANCEL waits in the socket in case it wakes;
- calls it has read end at their deadline (DeadlineExceededError) or, having none, fail at
  once with PeerUnresponsiveError(started=True): a request without a deadline is bounded by
  the heartbeat limit when its worker stops answering;
- new calls fail at once with PeerUnresponsiveError(started=False), unsent;
- the first sign of life makes it healthy again. A connection unresponsive for
  ``FORGET_AFTER`` s with no call left is closed. The rules are :mod:`dynamo_triton.liveness`'s.

Coming back after a network cut: the old connection may stay silent long after the path
heals, because the kernel retransmits its unacknowledged bytes (PINGs, requests) with
exponential backoff (after a 14 s cut the next retransmission came ~26 s after the cut). So
while a connection is unresponsive, the client *probes* the peer with a fresh connection, at
most one at a time and one per ``heartbeat`` s, each given ``min(connect_timeout, heartbeat)``
s to connect (TLS and token included) and to answer: a completed token handshake, or else a
PONG to a PING. Connecting is not enough (a frozen process's kernel still accepts). When a
probe answers while the old connection is still unresponsive, the probe becomes the
connection for new calls and the old one is *retired*: it takes no new call, its calls keep
the rules above (read ones end at their deadline or with their answer, unread ones already
failed), and once none is left it is reset (``SO_LINGER`` 0), so requests still queued in it
for a peer that never read them are discarded, never delivered late. Nothing is ever re-sent
by the client. The kernel's side of a black hole is bounded too: see ``tune_socket``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator

from dynamo_triton.errors import (
    DeadlineExceededError,
    PeerGoneError,
    PeerUnresponsiveError,
    TransportError,
    error_from_status,
)
from dynamo_triton.liveness import FORGET_AFTER, Liveness, Tick
from dyntriton_transport_tcp.frames import (
    ACK_BODY,
    HEADER,
    Frame,
    FrameType,
    decode_error,
    request_frame,
    simple_frame,
    tune_socket,
    write_frame,
)
from dyntriton_transport_tcp.protocol import FrameProtocol
from dyntriton_transport_tcp.security import answer

__all__ = ["TcpClient", "parse_address"]

log = logging.getLogger(__name__)

_PING = HEADER.pack(FrameType.PING, 0, 0)
_NO_TOKEN = HEADER.pack(FrameType.AUTH, 0, 0)
#: SO_LINGER on, 0 s: close() sends RST and drops what the socket still holds.
_RESET = struct.pack("ii", 1, 0)
_TOKEN_HINT = "set --transport-token (or DYN_TRANSPORT_TOKEN) on this frontend to the workers' token"
_TLS_HINT = (
    "give this frontend and the workers --transport-tls-cert/--transport-tls-key/--transport-tls-ca "
    "from the same CA, or neither"
)


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` from ``tcp://HOST:PORT``; raises TransportError otherwise."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if rest == address or not sep or not port.isdigit():
        raise TransportError(f"bad tcp address {address!r}; expected 'tcp://HOST:PORT'")
    return host.strip("[]"), int(port)


class _Inbox(asyncio.Queue):  # type: ignore[type-arg]
    """One call's frames (or the error that ends it); ``timed``: the call has a deadline."""

    timed: bool


_ENDS = frozenset((FrameType.END, FrameType.ERROR, FrameType.GONE))


class _UnaryInbox:
    """One unary call's slot in :attr:`_Connection.queues` (the same ``put_nowait``/``timed`` face as
    :class:`_Inbox`): keeps the first DATA, resolves ``future`` with the item that ends the stream."""

    __slots__ = ("answer", "future", "timed")

    def __init__(self, future: asyncio.Future[Frame | TransportError], timed: bool):
        self.future, self.timed = future, timed
        self.answer: memoryview | bytes | None = None

    def put_nowait(self, item: Frame | TransportError) -> None:
        if self.future.done():
            return
        if isinstance(item, TransportError) or item.type in _ENDS:
            self.future.set_result(item)
        elif item.type is FrameType.DATA and self.answer is None:
            self.answer = item.body


def _again(error: TransportError) -> TransportError:
    """A fresh copy of a connection-wide error, raised by one call (tracebacks are per raise)."""
    if isinstance(error, PeerUnresponsiveError):
        return PeerUnresponsiveError(error.message, started=error.started, hint=error.hint)
    return type(error)(error.message, hint=error.hint)


class _Connection:
    """A client connection: its protocol routes frames to each call's inbox by request id."""

    def __init__(self, address: str, client: TcpClient):
        self.address, self.client = address, client
        self.heartbeat, self.token = client.heartbeat, client.token
        self.loop = asyncio.get_running_loop()
        self.protocol: FrameProtocol
        self.writer: asyncio.StreamWriter
        self.queues: dict[int, _Inbox] = {}
        self.ids = itertools.count(1)
        self.failure: TransportError | None = None
        self.acked = 0  # highest request id the server has read
        self.answered = False  # the server sent at least one frame
        self.handshake: asyncio.Future[bytes | None] | None = None
        self.awaiting_challenge = False
        self.liveness: Liveness | None = None  # with a heartbeat, once watched
        self.retired = False  # a probe replaced it: no new calls; reset once its calls are done
        self.pong: asyncio.Future[None] | None = None  # a probe waiting for its PING's answer
        self._timer: asyncio.TimerHandle | None = None
        self._seen = self._unsent = 0

    # -- frames in -------------------------------------------------------------------------------
    def on_frame(self, frame: Frame) -> None:
        queue = self.queues.get(frame.request_id)
        if queue is not None:
            queue.put_nowait(frame)
        elif frame.request_id == 0:
            self._on_connection_frame(frame)
        # else the call was cancelled; drop its late responses

    def _on_connection_frame(self, frame: Frame) -> None:
        self.answered = True
        kind = frame.type
        if kind is FrameType.ACK:
            self.acked = ACK_BODY.unpack(frame.body)[0]
        elif kind is FrameType.CHALLENGE:
            if self.token is None:
                self.writer.write(_NO_TOKEN)  # so the worker's log says why this connection ends
                self.fail(TransportError(f"the worker at {self.address} requires a token; {_TOKEN_HINT}"))
            elif self.handshake is not None and not self.handshake.done():
                self.awaiting_challenge = False
                self.handshake.set_result(bytes(frame.body))
        elif kind is FrameType.AUTH:
            if self.handshake is not None and not self.handshake.done():
                self.handshake.set_result(None)
        elif kind is FrameType.PONG and self.awaiting_challenge:
            # The PING sent on connecting came back without a challenge first: no token asked for.
            self.fail(
                TransportError(
                    f"the worker at {self.address} does not ask for a token, and this frontend has one: "
                    "give the workers the same --transport-token (DYN_TRANSPORT_TOKEN)"
                )
            )
        elif kind is FrameType.PONG:
            if self.pong is not None and not self.pong.done():
                self.pong.set_result(None)
        elif kind is FrameType.ERROR:
            _, message = decode_error(bytes(frame.body))
            self.fail(TransportError(f"the worker at {self.address} refused this frontend: {message}"))

    def on_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, ssl.SSLError):
            self.fail(
                TransportError(
                    f"the worker at {self.address} ended the TLS session ({exc.reason or exc})",
                    hint=f"it probably refused this frontend's certificate; {_TLS_HINT}",
                )
            )
        elif isinstance(exc, TransportError):
            self.fail(TransportError(f"the peer at {self.address} broke the protocol ({exc.message})", hint=exc.hint))
        elif exc is not None:
            self.fail(PeerGoneError(f"the peer at {self.address} reset the connection ({exc})", hint=_GONE_HINT))
        elif not self.answered:
            # Closed before a single frame: a worker that refuses this frontend (TLS, token) does that.
            self.fail(
                TransportError(
                    f"the worker at {self.address} closed the connection before answering: it may require TLS "
                    "or a token this frontend lacks (--transport-tls-*, --transport-token)",
                    hint=f"{_TLS_HINT}; or {_TOKEN_HINT} (the worker's log says which)",
                )
            )
        else:
            self.fail(PeerGoneError(f"the peer at {self.address} closed the connection", hint=_GONE_HINT))

    def fail(self, error: TransportError) -> None:
        """Mark the connection dead and fail every call in flight on it at once."""
        if self.failure is None:
            self.failure = error
            if not isinstance(error, PeerGoneError):
                self.client.warn(self.address, error)
        for queue in self.queues.values():
            queue.put_nowait(self.failure)
        for waiter in (self.handshake, self.pong):
            if waiter is not None and not waiter.done():
                waiter.set_exception(_again(self.failure))
        if self._timer is not None:
            self._timer.cancel()
        self.writer.close()

    # -- setting up ------------------------------------------------------------------------------
    def opened(self, transport: asyncio.BaseTransport, protocol: FrameProtocol) -> None:
        """Called by the protocol once connected (after TLS, if any), before any frame arrives."""
        self.protocol = protocol
        self.writer = asyncio.StreamWriter(transport, protocol, None, self.loop)  # type: ignore[arg-type]
        tune_socket(self.writer)
        if self.token is not None:
            self.handshake = self.loop.create_future()  # the challenge may arrive before authenticate()
            # A worker with a token sends its challenge on accepting, before it reads anything: a PONG
            # coming first says it has none; a TLS worker refuses the PING at once (no 3 s wait).
            self.awaiting_challenge = True
            self.writer.write(_PING)

    async def authenticate(self) -> None:
        """Answer the server's token challenge and wait until it accepts (raises what fail() set)."""
        assert self.token is not None and self.handshake is not None
        challenge = await self.handshake
        assert challenge is not None
        self.handshake = self.loop.create_future()
        write_frame(self.writer, simple_frame(FrameType.AUTH, 0, answer(self.token, challenge)))
        await self.handshake
        self.handshake = None

    async def ping(self) -> None:
        """Return once the peer answered on this connection (raises what fail() set).

        A completed token handshake is an answer already (the worker's event loop checked the
        proof); otherwise a PING must come back as PONG.
        """
        if self.token is not None:
            return
        self.pong = self.loop.create_future()
        self.writer.write(_PING)
        await self.pong

    def watch(self) -> None:
        """Start the heartbeat (no-op when the heartbeat is 0)."""
        if self.heartbeat > 0:
            self.liveness = Liveness(self.heartbeat, self.loop.time)
            self._timer = self.loop.call_later(self.liveness.interval, self._tick)

    @property
    def unresponsive_since(self) -> float | None:
        """When the peer became unresponsive, or None (healthy, or no heartbeat)."""
        return None if self.liveness is None else self.liveness.unresponsive_since

    # -- liveness --------------------------------------------------------------------------------
    def _tick(self) -> None:
        liveness = self.liveness
        if self.failure is not None or liveness is None:
            return
        if self.retired and not self.queues:
            self.reset(PeerGoneError(f"the connection to {self.address} was replaced by a newer one"))
            return
        self._timer = self.loop.call_later(liveness.interval, self._tick)
        received = self.protocol.received
        unsent = self.writer.transport.get_write_buffer_size()
        if received != self._seen or unsent < self._unsent:
            self._seen = received
            back = liveness.alive()
            if back is not None:
                log.warning("tcp peer %s answers again after %.1f s unresponsive", self.address, back)
        self._unsent = unsent
        todo = liveness.tick()
        if todo & Tick.PING:
            self.writer.write(_PING)
        if todo & Tick.UNRESPONSIVE:
            self._declare_unresponsive(liveness.silent_for())
        if todo & Tick.PROBE and not self.retired:
            self.client.probe(self)
        if liveness.forgotten(idle=not self.queues):
            self.fail(PeerGoneError(f"the peer at {self.address} was unresponsive for {FORGET_AFTER:g} s"))

    def _declare_unresponsive(self, quiet: float) -> None:
        unread = [rid for rid in self.queues if rid > self.acked]
        log.warning(
            "tcp peer %s is unresponsive (no sign of life for %.1f s); %d call(s) in flight, %d of them not read by it",
            *(self.address, quiet, len(self.queues), len(unread)),
        )
        never = PeerUnresponsiveError.silent(self.address, quiet, read=False)
        running = PeerUnresponsiveError.silent(self.address, quiet, read=True)
        for rid, queue in self.queues.items():
            if rid > self.acked:
                queue.put_nowait(never)
            elif not queue.timed:
                queue.put_nowait(running)
        self.protocol.interrupt_drains(never)

    def unresponsive_error(self) -> PeerUnresponsiveError:
        assert self.liveness is not None and self.liveness.unresponsive
        return PeerUnresponsiveError.silent(self.address, self.liveness.silent_for(), read=None)

    # -- frames out ------------------------------------------------------------------------------
    async def send(self, buffers: list, deadline: float | None) -> None:
        if self.failure is not None:
            raise _again(self.failure)
        try:
            write_frame(self.writer, buffers)
            if self.protocol.paused:  # else drain() would return at once: skip its cost
                async with asyncio.timeout_at(deadline):
                    await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self.fail(PeerGoneError(f"the peer at {self.address} reset the connection ({exc})", hint=_GONE_HINT))
            raise PeerGoneError(f"the peer at {self.address} reset the connection ({exc})") from exc
        except PeerUnresponsiveError as exc:
            raise _again(exc) from None

    def reset(self, error: TransportError) -> None:
        """Fail the connection and reset it: the bytes still queued for the peer are dropped, never sent."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.fail(error)
        self.writer.transport.abort()
        self.client.forget(self)

    async def close(self) -> None:
        self.fail(PeerGoneError(f"the peer at {self.address} was disconnected by this client's close()"))


_GONE_HINT = "the worker probably stopped or crashed; retry on another instance"


class _ClientProtocol(FrameProtocol):
    def __init__(self, connection: _Connection, max_frame: int):
        super().__init__(connection.on_frame, connection.on_lost, max_frame)
        self.connection = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connection.opened(transport, self)


class TcpClient:
    """Sends requests to ``tcp://`` addresses; see :class:`dynamo_triton.transport.TransportClient`.

    :param connect_timeout: seconds to wait for a connection (TLS and token included) before an error.
    :param max_frame: largest frame accepted or sent, in bytes.
    :param heartbeat: seconds without a sign of life before a peer is unresponsive (0: never).
    :param tls: a client context (certificate, CA) for mutual TLS, or None for plain tcp.
    :param token: the workers' shared secret, or None.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_frame: int,
        heartbeat: float = 0.0,
        tls: ssl.SSLContext | None = None,
        token: bytes | None = None,
    ):
        self.connect_timeout, self.max_frame, self.heartbeat = connect_timeout, max_frame, heartbeat
        self.tls, self.token = tls, token
        self._connections: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Task[_Connection]] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._retired: set[_Connection] = set()
        self._warned: dict[tuple[str, str], float] = {}

    def unresponsive(self, address: str) -> bool:
        """True while the connection to ``address`` is open but its peer stopped answering."""
        connection = self._connections.get(address)
        return connection is not None and connection.unresponsive_since is not None and connection.failure is None

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

    async def _connect(self, address: str, timeout: float | None = None, *, install: bool = True) -> _Connection:
        """A new, watched connection to ``address``, made the one calls use if ``install``."""
        timeout = self.connect_timeout if timeout is None else timeout
        host, port = parse_address(address)
        connection = _Connection(address, self)
        step = "connect"
        try:
            async with asyncio.timeout(timeout):
                await self._open(connection, host, port)
                if self.token is not None:
                    step = "token"
                    await connection.authenticate()
        except TimeoutError as exc:
            if step == "token":
                connection.fail(
                    TransportError(
                        f"the worker at {address} did not ask for the token within {timeout:g} s",
                        hint="start the workers with the same --transport-token as this frontend",
                    )
                    if install
                    else PeerGoneError(f"the worker at {address} did not answer within {timeout:g} s")  # a probe
                )
                raise _again(connection.failure) from exc  # type: ignore[arg-type]
            raise PeerGoneError(
                f"cannot connect to {address}: no answer within {timeout:g} s",
                hint="the worker is down or unreachable; check the address it advertised",
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"the worker at {address} presented a certificate this frontend does not accept ({exc.verify_message})",
                hint="its certificate must be signed by this frontend's --transport-tls-ca and name the host "
                "the worker advertises (subjectAltName)",
            ) from exc
        except ssl.SSLError as exc:
            raise TransportError(
                f"TLS with the worker at {address} failed ({exc.reason or exc})",
                hint=f"the worker may run without TLS, or refused this frontend's certificate; {_TLS_HINT}",
            ) from exc
        except TransportError:
            raise
        except OSError as exc:
            if self.tls is not None and step == "connect" and isinstance(exc, ConnectionError):
                raise TransportError(
                    f"the worker at {address} closed the connection during the TLS handshake",
                    hint=f"the worker may run without TLS, or refused this frontend's certificate; {_TLS_HINT}",
                ) from exc
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's text repeats the address
            raise PeerGoneError(
                f"cannot connect to {address}: {reason}",
                hint="the worker is down or unreachable; check the address it advertised",
            ) from exc
        connection.watch()
        if install:
            self._connections[address] = connection
        return connection

    def probe(self, stale: _Connection) -> None:
        """Try a fresh connection to the unresponsive ``stale``'s peer, unless one is being tried."""
        address = stale.address
        if address in self._probes or self._connections.get(address) is not stale:
            return
        task = asyncio.create_task(self._probe(stale), name=f"dyntriton-tcp-probe-{address}")
        self._probes[address] = task
        task.add_done_callback(lambda done: self._probed(address, done))

    def _probed(self, address: str, task: asyncio.Task[None]) -> None:
        self._probes.pop(address, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("probe of unresponsive tcp peer %s failed", address, exc_info=task.exception())

    async def _probe(self, stale: _Connection) -> None:
        """Replace ``stale`` by a fresh connection if the peer answers on one within a heartbeat."""
        address, loop = stale.address, asyncio.get_running_loop()
        limit = min(self.connect_timeout, self.heartbeat)
        deadline = loop.time() + limit
        try:
            fresh = await self._connect(address, limit, install=False)
        except TransportError as exc:
            log.debug("probe of unresponsive tcp peer %s: %s", address, exc)
            return
        try:
            async with asyncio.timeout_at(deadline):
                await fresh.ping()
        except (TransportError, TimeoutError) as exc:
            log.debug("probe of unresponsive tcp peer %s: no answer (%s)", address, exc or "timeout")
            fresh.reset(PeerGoneError(f"the probe of {address} got no answer"))
            return
        except BaseException:
            fresh.reset(PeerGoneError(f"the probe of {address} was cancelled"))
            raise
        if stale.unresponsive_since is None or stale.failure is not None or self._connections.get(address) is not stale:
            fresh.reset(PeerGoneError(f"the probe of {address} is not needed any more"))  # the old one woke up
            return
        self._connections[address] = fresh
        stale.retired = True
        self._retired.add(stale)
        log.warning(
            "tcp peer %s answers on a new connection after %.1f s unresponsive; the old one is retired "
            "(%d call(s) left on it)",
            *(address, loop.time() - stale.unresponsive_since, len(stale.queues)),
        )

    def forget(self, connection: _Connection) -> None:
        """``connection`` is closed: drop it from the retired ones."""
        self._retired.discard(connection)

    async def _open(self, connection: _Connection, host: str, port: int) -> None:
        await asyncio.get_running_loop().create_connection(
            lambda: _ClientProtocol(connection, self.max_frame),
            host,
            port,
            ssl=self.tls,
            server_hostname=host if self.tls is not None else None,
        )

    def warn(self, address: str, error: TransportError) -> None:
        """Log a connection's failure, at most once per address and message every 30 s."""
        now = asyncio.get_running_loop().time()
        key = (address, error.message)
        if now - self._warned.get(key, -1e9) >= 30.0:
            self._warned[key] = now
            log.warning("tcp connection to %s failed: %s", address, error)

    async def _connection_for(
        self, address: str, endpoint: str, payload: bytes, timeout: float | None, deadline: float | None
    ) -> _Connection:
        """The connection a call to ``address`` goes over (made within ``deadline`` when there is none);
        TransportError for a payload past the frame limit, the peer's error while it is unresponsive."""
        if memoryview(payload).nbytes > self.max_frame - 1024:
            raise TransportError(
                f"request of {len(payload)} bytes exceeds the tcp frame limit of {self.max_frame} bytes",
                hint="raise max_frame_size (DYNTRITON_TCP_MAX_FRAME) on both sides",
            )
        connection = self._connections.get(address)
        if connection is None or connection.failure is not None:  # an open one needs no deadline scope
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connection(address)
            except TimeoutError:
                raise DeadlineExceededError(
                    f"deadline of {timeout} s exceeded while connecting to {address} (endpoint {endpoint!r})"
                ) from None
        liveness = connection.liveness
        if liveness is not None and liveness.unresponsive_since is not None:
            raise connection.unresponsive_error()
        return connection

    async def call(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """Send one request to ``address`` and yield each response payload; see the transport contract."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        connection = await self._connection_for(address, endpoint, payload, timeout, deadline)
        rid = next(connection.ids)
        queue = _Inbox()
        queue.timed = deadline is not None
        connection.queues[rid] = queue
        finished = False
        try:
            try:
                await connection.send(request_frame(rid, endpoint, payload, timeout), deadline)
            except TimeoutError:
                raise DeadlineExceededError(self._late(timeout, address, endpoint, connection)) from None
            while True:
                try:
                    if queue.empty():
                        async with asyncio.timeout_at(deadline):
                            item = await queue.get()
                    else:
                        item = queue.get_nowait()
                except TimeoutError:
                    raise DeadlineExceededError(self._late(timeout, address, endpoint, connection)) from None
                if isinstance(item, TransportError):
                    # An unresponsive peer may wake up and read the request: its CANCEL goes out below.
                    finished = not isinstance(item, PeerUnresponsiveError)
                    raise _again(item)
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

    async def call_unary(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> bytes | None:
        """:meth:`call` for a request answered once: see :class:`dynamo_triton.transport.UnaryCalling`.

        One future per call instead of a queue and an iterator; same frames, errors and CANCEL.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        connection = await self._connection_for(address, endpoint, payload, timeout, deadline)
        rid = next(connection.ids)
        inbox = _UnaryInbox(loop.create_future(), deadline is not None)
        connection.queues[rid] = inbox  # type: ignore[assignment]
        finished = False
        try:
            try:
                await connection.send(request_frame(rid, endpoint, payload, timeout), deadline)
                if deadline is None:
                    item = await inbox.future
                else:
                    async with asyncio.timeout_at(deadline):
                        item = await inbox.future
            except TimeoutError:
                raise DeadlineExceededError(self._late(timeout, address, endpoint, connection)) from None
            if isinstance(item, TransportError):
                # An unresponsive peer may wake up and read the request: its CANCEL goes out below.
                finished = not isinstance(item, PeerUnresponsiveError)
                if inbox.answer is not None:  # the answer arrived; only the end of the stream was lost
                    return inbox.answer  # type: ignore[return-value]
                raise _again(item)
            finished = True
            kind = item.type
            if kind is FrameType.END:
                return inbox.answer  # type: ignore[return-value]
            if kind is FrameType.ERROR:
                error = error_from_status(*decode_error(bytes(item.body)))
                if inbox.answer is not None and error.status == "UNAVAILABLE":
                    return inbox.answer  # type: ignore[return-value]
                raise error
            if inbox.answer is not None:  # GONE after the answer
                return inbox.answer  # type: ignore[return-value]
            raise PeerGoneError(bytes(item.body).decode(errors="replace"), hint="retry on another instance")
        finally:
            connection.queues.pop(rid, None)
            if not finished and connection.failure is None:
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    write_frame(connection.writer, simple_frame(FrameType.CANCEL, rid))

    @staticmethod
    def _late(timeout: float | None, address: str, endpoint: str, connection: _Connection) -> str:
        why = " (the peer is unresponsive)" if connection.unresponsive_since is not None else ""
        return f"deadline of {timeout} s exceeded waiting for {address} (endpoint {endpoint!r}){why}"

    async def close(self) -> None:
        """Close every connection; calls in flight raise PeerGoneError."""
        for probe in list(self._probes.values()):
            probe.cancel()
        connections = [*self._connections.values(), *self._retired]
        self._connections.clear()
        self._retired.clear()
        for connection in connections:
            await connection.close()
