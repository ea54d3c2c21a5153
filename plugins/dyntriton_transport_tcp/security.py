"""The tcp transport's protection: mutual-TLS contexts and the shared-token handshake.

TLS (``ssl`` from the standard library): the worker presents ``cert``/``key`` and requires a
client certificate chaining to ``ca``; the frontend presents its own and checks the worker's
against ``ca`` and the host the worker advertised. The token: a worker that has one sends a
random challenge on accepting a connection and serves nothing until the client answers
HMAC-SHA256(token, context + challenge), so the token itself never crosses the wire. Without
TLS the traffic is still readable by anyone on the path; the token only keeps strangers out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import ssl

from dynamo_triton.tls import load_context

__all__ = ["CHALLENGE_BYTES", "answer", "client_context", "new_challenge", "server_context", "tls_refusal"]

CHALLENGE_BYTES = 32
_CONTEXT = b"dyntriton-tcp-auth/1"


def new_challenge() -> bytes:
    """Random bytes a server sends to a client that must prove it holds the token."""
    return secrets.token_bytes(CHALLENGE_BYTES)


def answer(token: bytes, challenge: bytes) -> bytes:
    """The proof of holding ``token`` for ``challenge`` (what the client sends, what the server expects)."""
    return hmac.new(token, _CONTEXT + challenge, hashlib.sha256).digest()


#: The options the TLS files come from, named in errors.
_TLS_OPTIONS = ("--transport-tls-cert", "--transport-tls-key", "--transport-tls-ca")


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A worker's context: presents ``cert``, requires a client certificate signed by ``ca``."""
    return load_context(ssl.Purpose.CLIENT_AUTH, cert, key, ca, options=_TLS_OPTIONS, peers="frontends", ca_name="CA")


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """A frontend's context: presents ``cert``, checks the worker's certificate and host name against ``ca``."""
    context = load_context(ssl.Purpose.SERVER_AUTH, cert, key, ca, options=_TLS_OPTIONS, peers="workers", ca_name="CA")
    context.check_hostname = True
    return context


#: OpenSSL reasons a server sees when the client did not start TLS at all.
_PLAIN = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "UNEXPECTED_RECORD")


def tls_refusal(exc: BaseException) -> str:
    """Why a server-side TLS handshake failed, in words an operator acts on."""
    reason = str(getattr(exc, "reason", "") or "").upper()
    detail = getattr(exc, "reason", None) or exc.__class__.__name__
    fix = "frontends need --transport-tls-cert/--transport-tls-key/--transport-tls-ca"
    if any(mark in reason for mark in _PLAIN):
        return f"plain (non-TLS) connection: this worker requires TLS ({fix})"
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "NO_CERTIFICATE" in reason:
        return f"the client sent no certificate: this worker requires one signed by its --transport-tls-ca ({fix})"
    if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return f"the client's certificate is not accepted ({detail}): it must be signed by this worker's CA"
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within the time allowed"
    return f"TLS handshake failed ({detail}): {fix}, signed by the same CA as this worker's"
