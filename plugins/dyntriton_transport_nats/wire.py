"""The nats transport's wire format: control in the subject, bytes untouched in the payload.

A worker listens on ``{prefix}.{id}.>`` (address ``nats:{prefix}.{id}``). A client has one
inbox ``_INBOX.{nuid}`` and names each call ``{inbox}.{n}``; every message of a call that goes to
the worker carries that name as its NATS reply subject, and every message back is published
to ``{inbox}.{n}.{op}...``. Messages are never framed or copied into an envelope: what a
message is, and its sizes, are subject tokens; its payload is tensor bytes as they are.

Client to worker (subject suffix after the worker's subject, reply = ``{inbox}.{n}``):

- ``R.{timeout_us}.{total}.{endpoint}``: a request of ``total`` bytes; the payload is its first
  chunk; ``timeout_us`` is the client's remaining deadline in microseconds, ``-`` for none.
- ``M``: the next chunk of the request (chunks of one call arrive in order: one publisher,
  one connection, one subject, as NATS guarantees).
- ``C``: the client gave up (closed its iterator, was cancelled, or its deadline passed).
- ``P``: a liveness probe; reply ``{inbox}.p{k}``, answered with ``{inbox}.p{k}.O``.

Worker to client (subject ``{reply}.{op}...``):

- ``D.{total}``: a response of ``total`` bytes; the payload is its first chunk; ``M`` messages
  bring the rest.
- ``E``: the call finished. ``X``: it failed, payload ``status\\nmessage``. ``G``: the worker is
  shutting down and cancelled it (PeerGoneError on the client). ``O``: a probe's answer.

Worker to client, not about one call: ``{inbox}.a``, payload space-separated tokens: ``n`` for a
call the worker read (its handler started), ``~n`` for a chunked request still arriving (a sign
of life during long uploads), each since its last ``a`` to that inbox.

A payload larger than the server's ``max_payload`` (1 MiB by default) is cut into chunks of at
most ``max_payload`` bytes. A message published with a reply subject to a subject nobody
listens on comes back from the server as a header-only ``503`` status on that reply subject:
that is how a client learns, at once, that a worker is gone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from dynamo_triton.errors import TransportError

__all__ = [
    "ADDRESS_PREFIX",
    "as_parts",
    "check_endpoint",
    "chunks",
    "decode_error",
    "decode_timeout",
    "encode_error",
    "encode_timeout",
    "parse_address",
]

ADDRESS_PREFIX = "nats:"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def parse_address(address: str) -> str:
    """The worker subject of ``nats:SUBJECT``; raises TransportError otherwise."""
    subject = address.removeprefix(ADDRESS_PREFIX)
    if subject == address or not _SUBJECT.fullmatch(subject):
        raise TransportError(
            f"bad nats address {address!r}; expected 'nats:SUBJECT' with tokens of letters, digits, - and _"
        )
    return subject


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it can be one subject token; TransportError otherwise."""
    if not _TOKEN.fullmatch(endpoint):
        raise TransportError(
            f"endpoint name {endpoint!r} cannot travel in a NATS subject; use letters, digits, - and _ only"
        )
    return endpoint


def encode_timeout(timeout: float | None) -> str:
    """A timeout as a subject token: integer microseconds, ``-`` for none."""
    return "-" if timeout is None else str(max(0, int(timeout * 1e6)))


def decode_timeout(token: str) -> float | None:
    """The inverse of :func:`encode_timeout`."""
    return None if token == "-" else int(token) / 1e6


def as_parts(chunk: object) -> list[memoryview]:
    """A handler's response (bytes-like, or a list/tuple of them) as flat byte views, nothing copied.

    Raises TypeError before anything is sent, so a bad response fails only its own call.
    """
    items = chunk if isinstance(chunk, list | tuple) else [chunk]
    parts = []
    for item in items:
        if isinstance(item, str) or not isinstance(item, bytes | bytearray | memoryview):
            raise TypeError(f"transport payloads must be bytes-like, not {type(item).__name__}")
        parts.append(memoryview(item).cast("B"))
    return parts


def chunks(parts: list[memoryview], size: int) -> Iterator[bytes | memoryview]:
    """The payloads of the messages carrying ``parts`` back to back, each at most ``size`` bytes.

    A message made of one part's slice is that slice (no copy); only messages straddling two
    parts are joined. At least one (possibly empty) payload is produced.
    """
    total = sum(part.nbytes for part in parts)
    if total <= size:
        if len(parts) == 1:
            yield parts[0]
        else:
            yield b"".join(parts)
        return
    pending: list[memoryview] = []
    room = size
    for part in parts:
        offset = 0
        while offset < part.nbytes:
            piece = part[offset : offset + room]
            offset += piece.nbytes
            room -= piece.nbytes
            pending.append(piece)
            if room == 0:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, room = [], size
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def encode_error(status: str, message: str) -> bytes:
    """The payload of an ``X`` message."""
    return f"{status}\n{message}".encode()


def decode_error(payload: bytes) -> tuple[str, str]:
    """``(status, message)`` from an ``X`` message."""
    status, _, message = bytes(payload).decode(errors="replace").partition("\n")
    return status, message
