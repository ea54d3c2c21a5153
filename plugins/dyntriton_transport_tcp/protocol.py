"""The tcp transport's receiving side: a buffered protocol that cuts the byte stream into frames.

Small frames are parsed out of one reusable scratch buffer (many per ``recv``);
a large body is received straight into a buffer of its exact size, so a 64 MiB
tensor costs one copy out of the kernel and one into the ``bytes`` handed on,
instead of the four a StreamReader makes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from dynamo_triton.errors import TransportError
from dyntriton_transport_tcp.frames import HEADER, REQUEST_META, Frame, FrameType

__all__ = ["FrameProtocol"]

#: Bodies at least this big are received into their own buffer.
_BIG = 64 * 1024
_SCRATCH = 4 * _BIG
_KINDS = frozenset(FrameType)
#: First bytes of TLS records: an alert (a TLS server refusing plain bytes), a handshake (a ClientHello).
_TLS_RECORDS = (0x15, 0x16)


def _unknown_kind(kind: int) -> TransportError:
    if kind in _TLS_RECORDS:
        return TransportError(
            "peer speaks TLS and this side does not: give both sides --transport-tls-cert/--transport-tls-key/"
            "--transport-tls-ca from one CA, or neither"
        )
    return TransportError(f"peer sent unknown frame type {kind}; is it a dyntriton tcp peer of the same version?")


def _decode(kind: int, request_id: int, body: memoryview, *, owned: bool = False) -> Frame:
    """One frame from its header fields and a view of its body.

    The body is copied once, into bytes, except a REQUEST's payload received into a buffer of
    its own (``owned``): that payload is handed on as a view of the buffer, never copied (the
    worker points Triton at the tensors inside it).
    """
    frame_type = FrameType(kind)  # checked by _parse
    if frame_type is not FrameType.REQUEST:
        return Frame(frame_type, request_id, bytes(body))
    if len(body) < REQUEST_META.size:
        raise TransportError(f"peer sent a REQUEST frame of {len(body)} bytes, shorter than its fixed part")
    timeout, name_len = REQUEST_META.unpack_from(body)
    start = REQUEST_META.size + name_len
    endpoint = bytes(body[REQUEST_META.size : start]).decode()
    payload = body[start:] if owned else bytes(body[start:])
    return Frame(frame_type, request_id, payload, endpoint, None if timeout < 0 else timeout)


class _WriteFlowControl:
    """What ``asyncio.StreamWriter.drain()`` needs from its protocol: pause/resume and a drain waiter.

    asyncio's own ``FlowControlMixin`` would do, but it derives from ``asyncio.Protocol``,
    and uvloop treats any ``Protocol`` subclass as a plain (non-buffered) protocol: it then
    calls ``data_received`` and never ``get_buffer``/``buffer_updated``, which hung every
    request. Keeping this class outside the Protocol hierarchy makes both loops use the
    buffered path.
    """

    def __init__(self) -> None:
        self._paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._connection_lost = False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _writer_lost(self, exc: BaseException | None) -> None:
        self._connection_lost = True
        if not self._paused:
            return
        for waiter in self._drain_waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    @property
    def paused(self) -> bool:
        """The transport's send buffer is over its high-water mark: ``drain()`` would wait."""
        return self._paused

    def interrupt_drains(self, exc: BaseException) -> None:
        """Make every ``drain()`` waiting now raise ``exc`` (their peer stopped reading for good)."""
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    async def _drain_helper(self) -> None:
        if self._connection_lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    def _get_close_waiter(self, stream: object) -> asyncio.Future[None]:
        raise NotImplementedError


class FrameProtocol(_WriteFlowControl, asyncio.BufferedProtocol):
    """Calls ``on_frame(frame)`` for each frame received and ``on_lost(exc)`` once when the connection ends.

    Pair it with an ``asyncio.StreamWriter(transport, protocol, None, loop)`` for
    sending: the flow-control part gives the writer's ``drain()`` its backpressure.
    A frame over ``max_frame`` bytes or of an unknown type aborts the connection
    and reaches ``on_lost`` as a TransportError. Works on asyncio's loop and on uvloop.
    """

    def __init__(
        self, on_frame: Callable[[Frame], None], on_lost: Callable[[BaseException | None], None], max_frame: int
    ):
        super().__init__()
        self.on_frame, self.on_lost, self.max_frame = on_frame, on_lost, max_frame
        self.transport: asyncio.Transport | None = None
        self._scratch = bytearray(_SCRATCH)
        self._view = memoryview(self._scratch)
        self._start = self._end = 0
        self._big: bytearray | None = None
        self._big_pos = 0
        self._big_header: tuple[int, int] = (0, 0)
        self._error: BaseException | None = None
        #: Bytes received so far: the heartbeat's sign of life, read a few times a second.
        self.received = 0
        #: Called as ``gate(kind, length)`` before each frame is accepted, while set; raises
        #: TransportError to refuse it (a server waiting for a client's token).
        self.gate: Callable[[FrameType, int], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_pos :]
        if self._start and len(self._scratch) - self._end < _BIG:
            pending = self._end - self._start
            self._scratch[:pending] = self._view[self._start : self._end]
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        try:
            if self._big is not None:
                self._big_pos += nbytes
                if self._big_pos == len(self._big):
                    big, self._big = self._big, None
                    self.on_frame(_decode(*self._big_header, memoryview(big), owned=True))
                return
            self._end += nbytes
            self._parse()
        except TransportError as exc:
            self._error = exc
            if self.transport is not None:
                self.transport.abort()

    def _parse(self) -> None:
        view = self._view
        while self._end - self._start >= HEADER.size:
            kind, request_id, length = HEADER.unpack_from(view, self._start)
            if kind not in _KINDS:
                raise _unknown_kind(kind)
            if self.gate is not None:
                self.gate(FrameType(kind), length)
            if length > self.max_frame:
                raise TransportError(
                    f"peer sent a {length}-byte frame; the limit is {self.max_frame} bytes",
                    hint="raise max_frame_size (DYNTRITON_TCP_MAX_FRAME) on both sides",
                )
            body_start = self._start + HEADER.size
            available = self._end - body_start
            if available >= length:
                self._start = body_start + length
                self.on_frame(_decode(kind, request_id, view[body_start : self._start]))
            elif length >= _BIG:
                self._big = bytearray(length)
                self._big[:available] = view[body_start : self._end]
                self._big_pos = available
                self._big_header = (kind, request_id)
                self._start = self._end = 0
                return
            else:
                break
        if self._start == self._end:
            self._start = self._end = 0

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._writer_lost(exc)
        self.on_lost(self._error or exc)
