"""Compressed bodies as Triton's REST frontend handles them: ``Content-Encoding`` in, ``Accept-Encoding`` out.

Requests: ``gzip`` and ``deflate`` (zlib stream; a raw deflate stream is accepted too)
bodies are inflated up to the body limit and no further, so a small compressed body
cannot expand without bound; ``identity`` or no header means as is; anything else is
415 with ``Accept-Encoding: gzip, deflate``. Responses: the encoding Triton would pick
from ``Accept-Encoding`` (the highest ``q`` among ``gzip``, ``deflate``, ``identity``;
ties keep the first). Large bodies are (de)compressed in a thread: zlib releases the
GIL and the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import zlib

from dynamo_triton.errors import DyntritonError, InvalidRequestError

__all__ = ["BodyTooLargeError", "UnsupportedEncodingError", "compress", "decompress", "response_encoding"]

#: Bodies at least this large are (de)compressed off the event loop.
THREAD_THRESHOLD = 64 * 1024
SUPPORTED = "gzip, deflate"


class BodyTooLargeError(DyntritonError):
    """The (inflated) request body is past ``--http-max-input-size`` (HTTP 413)."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, size: int | None, limit: int):
        what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(
            f"request body of {what} exceeds the maximum allowed input size of {limit} bytes",
            hint="send less data per request, or raise the limit with --http-max-input-size",
        )


class UnsupportedEncodingError(DyntritonError):
    """A ``Content-Encoding`` the frontend cannot inflate (HTTP 415)."""

    status = "UNIMPLEMENTED"

    def __init__(self, encoding: str):
        super().__init__(
            f"Unsupported compression type '{encoding}' in Content-Encoding",
            hint=f"compress the body with one of: {SUPPORTED}, or send it uncompressed",
        )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    if encoding == "deflate" and body[:1] and (body[0] & 0x0F) != 8:  # no zlib header: a raw deflate stream
        wbits = -zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequestError(
            f"the {encoding} request body cannot be decompressed: {exc}",
            hint=f"check that the body really is {encoding}-compressed, or drop the Content-Encoding header",
        ) from None
    if len(out) > limit:
        raise BodyTooLargeError(None, limit)
    if not inflater.eof:
        raise InvalidRequestError(f"the {encoding} request body is truncated (the compressed stream does not end)")
    return out


async def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The request body with its ``Content-Encoding`` undone, at most ``limit`` bytes.

    :raises UnsupportedEncodingError: an encoding other than gzip, deflate or identity.
    :raises BodyTooLargeError: the inflated body is past ``limit``.
    :raises InvalidRequestError: the body is not valid for its encoding.
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in ("gzip", "deflate"):
        raise UnsupportedEncodingError(encoding or "")
    if len(body) < THREAD_THRESHOLD:
        return _inflate(body, name, limit)
    return await asyncio.to_thread(_inflate, body, name, limit)


def response_encoding(accept_encoding: str | None) -> str:
    """Triton's choice from an ``Accept-Encoding`` header: ``gzip``, ``deflate`` or ``identity``."""
    if not accept_encoding:
        return "identity"
    chosen, weight = "identity", 0.0
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        if name in ("identity", "gzip", "deflate") and quality > weight:
            chosen, weight = name, quality
    return chosen


def _deflate(body: bytes, encoding: str) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    compressor = zlib.compressobj(wbits=wbits)
    return compressor.compress(body) + compressor.flush()


async def compress(body: bytes, encoding: str) -> bytes:
    """``body`` compressed with ``encoding`` (``gzip`` or ``deflate``; ``identity`` returns it as is)."""
    if encoding == "identity":
        return body
    if len(body) < THREAD_THRESHOLD:
        return _deflate(body, encoding)
    return await asyncio.to_thread(_deflate, body, encoding)
