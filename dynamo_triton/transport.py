"""The request-plane interface that transport plugins (tcp, inproc, nats...) implement.

A transport carries opaque request bytes from the frontend to one worker
instance and a stream of response bytes back. It never looks inside them: the
frontend forwards the KServe request bytes it received and returns the response
bytes it gets.

A handler yields each response as one bytes-like object, or as a list (or tuple) of
bytes-like parts that together are the response: transports send the parts one after
the other without joining them (a serialized header followed by tensor buffers), and
the client receives one payload, their concatenation. Anything else fails the
request with ``INTERNAL`` and leaves the connection usable.

Error contract: a handler that raises a :class:`~dynamo_triton.errors.DyntritonError`
makes the client's iterator raise an error with the same ``status`` and message
(rebuilt with :func:`~dynamo_triton.errors.error_from_status`); any other exception
arrives as status ``INTERNAL``. A peer that vanishes raises
:class:`~dynamo_triton.errors.PeerGoneError`. Closing the client's iterator early
(``aclose()``, or cancelling the consuming task) cancels the handler on the server.

Liveness (optional, see :class:`LivenessReporting`): a client with heartbeats reports a
connected peer that stopped answering as *unresponsive*. Its calls the peer never received
fail at once with :class:`~dynamo_triton.errors.PeerUnresponsiveError` (``started=False``:
safe to send elsewhere), so do new calls; calls it received end at their deadline
(DeadlineExceededError) or, without one, with PeerUnresponsiveError (``started=True``).
When the peer answers again it is healthy again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Chunk",
    "Handler",
    "LivenessReporting",
    "Transport",
    "TransportClient",
    "TransportRequest",
    "TransportServer",
    "TransportSettings",
    "liveness_check",
]


@dataclass(frozen=True)
class TransportRequest:
    """One request as the server's handler sees it.

    :param endpoint: which handler the caller wants, e.g. ``"infer"`` or ``"statistics"``.
    :param payload: the request bytes, untouched (a memoryview when the transport received a large
        request into a buffer of its own: valid for as long as the handler runs).
    :param timeout: seconds the caller will still wait, or None for no deadline.
    """

    endpoint: str
    payload: bytes | memoryview
    timeout: float | None = None


#: One response as a handler yields it: bytes-like, or bytes-like parts sent back to back.
Chunk = (
    bytes | bytearray | memoryview | list[bytes | bytearray | memoryview] | tuple[bytes | bytearray | memoryview, ...]
)

#: The server side's callback: one request in, an async stream of responses out.
Handler = Callable[[TransportRequest], AsyncIterator[Chunk]]


@runtime_checkable
class TransportServer(Protocol):
    """The worker side: accepts requests and runs ``handler`` for each, many at once."""

    async def start(self, handler: Handler) -> str:
        """Start serving; returns the address clients use (advertised in the model card)."""

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` s, cancel the rest."""


@runtime_checkable
class TransportClient(Protocol):
    """The frontend side: sends requests to addresses servers advertised."""

    def call(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """Send one request; iterate its responses. See the module's error contract."""

    async def close(self) -> None:
        """Close every connection; calls still running raise PeerGoneError."""


@runtime_checkable
class Transport(Protocol):
    """What a transport plugin's factory returns: a maker of servers and clients."""

    name: str

    def server(self, host: str = "127.0.0.1", port: int = 0) -> TransportServer:
        """A server bound to ``host``:``port`` (0 = any free port) once started."""

    def client(self) -> TransportClient:
        """A client able to reach any address this transport's servers advertise."""


@runtime_checkable
class LivenessReporting(Protocol):
    """What a TransportClient with heartbeats adds: which peers stopped answering.

    Optional: clients without it count as always healthy (:func:`liveness_check`).
    """

    def unresponsive(self, address: str) -> bool:
        """True while the peer at ``address`` is connected but has shown no sign of life for the
        transport's heartbeat limit; False when it answers, or when nothing is known (no connection)."""


def liveness_check(client: TransportClient) -> Callable[[str], bool]:
    """``client.unresponsive`` if the client reports liveness, else a check that says "healthy" (False)."""
    if isinstance(client, LivenessReporting):
        return client.unresponsive
    return _healthy


def _healthy(address: str) -> bool:
    return False


@dataclass(frozen=True)
class TransportSettings:
    """Options the CLI hands to a transport factory written ``factory(settings)``.

    Factories written ``factory()`` keep working and get none (asking such a transport for TLS
    or a token is a ConfigError: see :meth:`dynamo_triton.plugins.Plugins.transport`).
    A process uses one settings object for its server and its clients.

    :param tls_cert: PEM certificate this process presents (a worker's server certificate, a
        frontend's client certificate).
    :param tls_key: PEM private key of ``tls_cert``.
    :param tls_ca: PEM CA bundle the peer's certificate must chain to (both sides check: mutual TLS).
    :param token: shared secret a client must prove it holds before a server serves it.
    :param heartbeat: seconds without a sign of life before a client reports a peer unresponsive
        (0: no heartbeats).
    :param options: transport-specific options.
    """

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    token: str | None = field(default=None, repr=False)
    heartbeat: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def secured(self) -> bool:
        """TLS or a token is asked for."""
        return bool(self.tls_cert or self.tls_key or self.tls_ca or self.token)
