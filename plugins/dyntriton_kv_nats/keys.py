"""How store keys become JetStream KV keys, and prefixes become subject filters.

JetStream KV keys are subject tokens joined by ``.`` and may hold only ``[-/_=.A-Za-z0-9]``;
store keys are ``/``-separated paths of any text. A store key lives in the bucket at
``k.{segment}.{segment}...``: each ``/``-separated segment is one token, letters, digits, ``-``
and ``_`` kept, every other UTF-8 byte written ``=XX`` (upper-case hex), an empty segment
written ``=``. So ``dyntriton/v1/dynamo/models/identity/7f3a`` reads
``k.dyntriton.v1.dynamo.models.identity.7f3a`` in ``nats kv ls``, and a prefix ending in ``/``
is an exact subject filter (``k.dyntriton.v1.>``); any other prefix is filtered by the
tokens it completes and then by the key's text.

Lease records live at ``l.{lease id in hex}`` (see :mod:`dyntriton_kv_nats.leases`).
"""

from __future__ import annotations

import re

__all__ = ["KEY_TOKEN", "LEASE_TOKEN", "decode_key", "encode_key", "lease_key", "prefix_filter"]

KEY_TOKEN = "k"
LEASE_TOKEN = "l"
_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def _encode_segment(segment: str) -> str:
    if not segment:
        return "="
    out = []
    for char in segment:
        if _PLAIN.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    return "".join(out)


def _decode_segment(token: str) -> str:
    if token == "=":
        return ""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(token):
        raw += token[position : match.start()].encode()
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += token[position:].encode()
    return raw.decode()


def encode_key(key: str) -> str:
    """The bucket key of store key ``key``."""
    return ".".join([KEY_TOKEN, *(_encode_segment(segment) for segment in key.split("/"))])


def decode_key(bucket_key: str) -> str:
    """The store key of bucket key ``k.…`` (the inverse of :func:`encode_key`)."""
    tokens = bucket_key.split(".")
    return "/".join(_decode_segment(token) for token in tokens[1:])


def lease_key(lease: int) -> str:
    """The bucket key of lease ``lease``'s record."""
    return f"{LEASE_TOKEN}.{lease:x}"


def prefix_filter(prefix: str) -> tuple[str, bool]:
    """``(bucket key filter, exact)`` for the store keys starting with ``prefix``.

    ``exact`` is False when the filter matches more than the prefix does, and keys must still be
    checked with ``key.startswith(prefix)``.
    """
    *whole, partial = prefix.split("/")
    tokens = [KEY_TOKEN, *(_encode_segment(segment) for segment in whole)]
    return ".".join([*tokens, ">"]), partial == ""
