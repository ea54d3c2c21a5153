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

Unary calls (optional, see :class:`UnaryCalling`): a request answered with exactly one response
(a non-decoupled model) may be sent with :func:`call_unary`, which uses the client's own
``call_unary`` when it has one (no per-call iterator: cheaper) and reads ``call`` to its end
otherwise. Same errors, deadlines and cancel as ``call``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import click

from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.settings import setting

__all__ = [
    "Chunk",
    "Handler",
    "LivenessReporting",
    "Transport",
    "TransportClient",
    "TransportFactory",
    "TransportRequest",
    "TransportServer",
    "TransportSettings",
    "UnaryCalling",
    "call_unary",
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


@runtime_checkable
class UnaryCalling(Protocol):
    """What a TransportClient may add: a call answered with one response, without an iterator.

    Optional: :func:`call_unary` falls back on ``call`` for clients without it.
    """

    async def call_unary(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> bytes | None:
        """Send one request; its first response once the stream ended (None: it ended with none).

        Errors, deadline and cancel as :meth:`TransportClient.call`; responses after the first are
        dropped; a stream that fails with an ``UNAVAILABLE`` error *after* its first response
        returns that response (the answer arrived; only the end of the stream was lost).
        """


async def call_unary(
    client: TransportClient, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
) -> bytes | None:
    """One request answered with one response (see :class:`UnaryCalling`): ``client.call_unary`` or ``call``."""
    if isinstance(client, UnaryCalling):
        return await client.call_unary(address, endpoint, payload, timeout=timeout)
    answer: bytes | None = None
    stream = client.call(address, endpoint, payload, timeout=timeout)
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                if answer is None:
                    answer = chunk
    except DyntritonError as exc:
        if answer is None or exc.status != "UNAVAILABLE":
            raise
    return answer


def liveness_check(client: TransportClient) -> Callable[[str], bool]:
    """``client.unresponsive`` if the client reports liveness, else a check that says "healthy" (False)."""
    if isinstance(client, LivenessReporting):
        return client.unresponsive
    return _healthy


def _healthy(address: str) -> bool:
    return False


@dataclass(frozen=True)
class TransportSettings:
    """The request plane's common settings, the same on ``worker``, ``frontend`` and ``serve``.

    A transport plugin registers a settings class extending this one with its own fields
    (``register("tcp", factory, settings=TcpSettings)``); its factory receives that class.
    Factories registered without one and written ``factory()`` (the original form) keep working and
    get none (asking such a transport for TLS or a token is a ConfigError: see
    :meth:`dynamo_triton.plugins.Plugins.transport`). A process uses one settings object for its
    server and its clients.

    :param tls_cert: PEM certificate this process presents (a worker's server certificate, a
        frontend's client certificate).
    :param tls_key: PEM private key of ``tls_cert``.
    :param tls_ca: PEM CA bundle the peer's certificate must chain to (both sides check: mutual TLS).
    :param token: shared secret a client must prove it holds before a server serves it.
    :param heartbeat: seconds without a sign of life before a client reports a peer unresponsive
        (0: no heartbeats).
    :param options: transport-specific options for factories without a settings class
        (``advertise_host``: ``worker --advertise-host``).
    """

    __panel__ = "Request plane (every transport)"

    tls_cert: str | None = setting(
        None,
        "--transport-tls-cert",
        envvar="DYN_TRANSPORT_TLS_CERT",
        type=click.Path(dir_okay=False),
        help="Request plane TLS (tcp): the PEM certificate this process presents (a worker's server "
        "certificate, a frontend's client certificate). With --transport-tls-key and --transport-tls-ca.",
    )
    tls_key: str | None = setting(
        None,
        "--transport-tls-key",
        envvar="DYN_TRANSPORT_TLS_KEY",
        type=click.Path(dir_okay=False),
        help="PEM private key of --transport-tls-cert.",
    )
    tls_ca: str | None = setting(
        None,
        "--transport-tls-ca",
        envvar="DYN_TRANSPORT_TLS_CA",
        type=click.Path(dir_okay=False),
        help="PEM CA the other side's certificate must be signed by (mutual TLS: workers refuse frontends "
        "without one, frontends check the worker's and its host name).",
    )
    token: str | None = field(
        default=None,
        repr=False,
        metadata=setting(
            None,
            "--transport-token",
            envvar="DYN_TRANSPORT_TOKEN",
            secret=True,
            help="Shared secret: workers serve only frontends that prove they hold it (tcp; never sent). "
            "Prefer the environment variable: command lines are visible to other users.",
        ).metadata,
    )
    heartbeat: float = setting(
        1.0,
        "--transport-heartbeat",
        envvar="DYN_TRANSPORT_HEARTBEAT",
        type=click.FloatRange(min=0),
        help="Seconds without a sign of life before a frontend stops routing to a worker (frozen, stuck) "
        "until it answers again; 0: no heartbeats (tcp and nats).",
    )
    options: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """TLS needs its three files together; raises ConfigError otherwise."""
        given = [self.tls_cert, self.tls_key, self.tls_ca]
        if any(given) and not all(given):
            raise ConfigError(
                "--transport-tls-cert, --transport-tls-key and --transport-tls-ca go together (mutual TLS): "
                "give all three or none"
            )

    @property
    def secured(self) -> bool:
        """TLS or a token is asked for."""
        return bool(self.tls_cert or self.tls_key or self.tls_ca or self.token)


class TransportFactory(Protocol):
    """What a transport plugin registers: ``factory(settings) -> Transport``, cheap, no I/O.

    ``settings`` is an instance of the settings class registered with it (extending
    :class:`TransportSettings`).
    """

    def __call__(self, settings: Any, /) -> Transport: ...
