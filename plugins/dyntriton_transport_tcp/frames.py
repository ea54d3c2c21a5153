"""The tcp transport's wire format: fixed-size frame headers and their bodies.

Every frame is a 17-byte header ``!BQQ`` (type, request id, body length)
followed by the body. Bodies by type:

- ``REQUEST``: ``!dH`` (timeout in seconds, negative for none; endpoint length),
  the UTF-8 endpoint, then the request payload untouched.
- ``DATA``: one response payload, untouched.
- ``END``: empty; the request finished.
- ``ERROR``: UTF-8 ``status`` and ``message`` separated by a newline; the request failed.
- ``CANCEL``: empty; the client gave up, the server cancels the handler.
- ``GONE``: UTF-8 message; the server is shutting down and cancelled the request
  (the client raises PeerGoneError, so callers retry elsewhere as for a crash).

Connection frames (request id 0, which no request uses):

- ``PING`` / ``PONG``: empty; the client sends PING when the connection has been quiet for a
  while, the server's protocol answers PONG at once (no task). Any byte received is a sign of
  life; a peer silent for the heartbeat limit is *unresponsive* (see ``client.py``).
- ``ACK``: ``!Q``, the highest REQUEST id the server has read on this connection. Written
  before the handlers of those requests run, so a request above the last ACK has certainly
  not started on the server (one ACK per batch of requests read together).
- ``CHALLENGE``: 32 random bytes; a server that requires a token sends it on accepting (a
  client with a token sends PING on connecting: a PONG before any CHALLENGE means the server
  wants no token; PING and AUTH are the only frames a server reads before the token).
- ``AUTH``: client to server, HMAC-SHA256(token, ``b"dyntriton-tcp-auth/1"`` + challenge), or
  empty from a client that has no token; server to client, empty: the connection is accepted.
- ``ERROR`` with request id 0: the server refuses the connection (e.g. a wrong token) and
  closes it; the body says why, as for a request.

Both sides must run the same dyntriton version: a peer that does not know a frame type
closes the connection.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "ACK_BODY",
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "REQUEST_META",
    "USER_TIMEOUT",
    "Frame",
    "FrameType",
    "as_bytes_view",
    "decode_error",
    "encode_error",
    "request_frame",
    "simple_frame",
    "tune_socket",
    "write_frame",
]

HEADER = struct.Struct("!BQQ")
REQUEST_META = struct.Struct("!dH")
ACK_BODY = struct.Struct("!Q")
#: Frames up to this size are joined into one write; bigger bodies are written as they are.
_JOIN_BELOW = 64 * 1024
#: Largest body accepted or sent, in bytes; 2 GiB leaves room for 64 MiB and 1 GiB tensors.
DEFAULT_MAX_FRAME = 2 << 30
#: Seconds sent bytes may stay unacknowledged before the kernel resets the connection.
USER_TIMEOUT = 30.0


class FrameType(IntEnum):
    """What a frame carries."""

    REQUEST = 1
    DATA = 2
    END = 3
    ERROR = 4
    CANCEL = 5
    GONE = 6
    PING = 7
    PONG = 8
    ACK = 9
    CHALLENGE = 10
    AUTH = 11


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; ``endpoint`` and ``timeout`` are set only for REQUEST."""

    type: FrameType
    request_id: int
    body: bytes | memoryview
    endpoint: str = ""
    timeout: float | None = None


def as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of ``data`` (no copy); TypeError for anything that is not contiguous bytes.

    Checked before any byte of a frame is written, so a bad payload fails its
    request instead of corrupting the connection shared with other requests.
    """
    if isinstance(data, str):
        raise TypeError(f"transport payloads must be bytes-like, not str ({data[:20]!r}...)")
    return memoryview(data).cast("B")


def simple_frame(
    kind: FrameType, request_id: int, body: bytes | bytearray | memoryview | list | tuple = b""
) -> list[bytes | memoryview]:
    """The buffers of one DATA/END/ERROR/CANCEL frame, for :func:`write_frame` (body not copied).

    ``body`` may be a list or tuple of bytes-like parts: the frame's body is their concatenation,
    sent part by part.
    """
    if isinstance(body, list | tuple):
        parts = [part if isinstance(part, bytes) else as_bytes_view(part) for part in body]
        return [HEADER.pack(kind, request_id, sum(len(part) for part in parts)), *parts]
    if not isinstance(body, bytes):
        body = as_bytes_view(body)
    return [HEADER.pack(kind, request_id, len(body)), body]


def request_frame(request_id: int, endpoint: str, payload: bytes | memoryview, timeout: float | None) -> list:
    """The buffers of one REQUEST frame (payload not copied)."""
    if not isinstance(payload, bytes):
        payload = as_bytes_view(payload)
    name = endpoint.encode()
    meta = REQUEST_META.pack(-1.0 if timeout is None else float(timeout), len(name))
    length = len(meta) + len(name) + len(payload)
    return [HEADER.pack(FrameType.REQUEST, request_id, length), meta, name, payload]


def tune_socket(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay (small frames go out at once); a black-holed connection ends in ~30 s.

    Keepalive notices a vanished host on an idle connection (15 s idle, then 3 probes 5 s
    apart). It never fires while bytes wait for an acknowledgement, and then the kernel would
    retransmit for ~15 minutes (``tcp_retries2``): ``TCP_USER_TIMEOUT`` bounds that to
    :data:`USER_TIMEOUT` s of unacknowledged data. A live peer acknowledges even when it does not
    read (a full buffer is a zero window, whose probes are answered), so only a host that is gone
    or cut off hits it; its calls fail with PeerGoneError (reset) as for a crash.
    """
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", 15),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(USER_TIMEOUT * 1000)),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def write_frame(writer: asyncio.StreamWriter, buffers: list) -> None:
    """Queue one frame's buffers on ``writer`` without copying large bodies.

    Python 3.11's ``writelines`` joins its arguments (a full copy), so small frames
    are joined here on purpose (one send) and large bodies go through ``write``
    separately, which sends straight from the caller's buffer when the socket can take it.
    """
    if sum(len(buffer) for buffer in buffers) < _JOIN_BELOW:
        writer.write(b"".join(buffers))
        return
    for buffer in buffers:
        if len(buffer):
            writer.write(buffer)


def encode_error(status: str, message: str) -> bytes:
    """The body of an ERROR frame."""
    return f"{status}\n{message}".encode()


def decode_error(body: bytes) -> tuple[str, str]:
    """``(status, message)`` from an ERROR frame's body."""
    status, _, message = body.decode(errors="replace").partition("\n")
    return status, message
