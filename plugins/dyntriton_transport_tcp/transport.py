"""The tcp transport object: makes servers and clients sharing one configuration."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace

from dynamo_triton.errors import ConfigError
from dynamo_triton.transport import TransportSettings
from dyntriton_transport_tcp.client import TcpClient
from dyntriton_transport_tcp.frames import DEFAULT_MAX_FRAME
from dyntriton_transport_tcp.options import TcpSettings
from dyntriton_transport_tcp.security import client_context, server_context
from dyntriton_transport_tcp.server import TcpServer

__all__ = ["TcpTransport"]


@dataclass
class TcpTransport:
    """Asyncio tcp with length-prefixed frames; see :mod:`dyntriton_transport_tcp.frames`.

    :param advertise_host: host to advertise when bound to a wildcard (default: this host's address).
    :param max_frame_size: largest frame in bytes, both directions.
    :param connect_timeout: seconds a client waits for a connection (TLS and token included).
    :param heartbeat: seconds without a sign of life before a client calls its peer unresponsive (0: never).
    :param tls_cert: PEM certificate (server certificate for a worker, client certificate for a frontend).
    :param tls_key: its PEM key.
    :param tls_ca: PEM CA the peer's certificate must chain to; all three or none (mutual TLS).
    :param token: shared secret a client must prove it holds (HMAC challenge; never sent).
    """

    advertise_host: str | None = None
    max_frame_size: int = DEFAULT_MAX_FRAME
    connect_timeout: float = 3.0
    heartbeat: float = 1.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    token: str | None = field(default=None, repr=False)
    name: str = "tcp"

    def __post_init__(self) -> None:
        given = [self.tls_cert, self.tls_key, self.tls_ca]
        if any(given) and not all(given):
            raise ConfigError(
                "tcp TLS needs a certificate, its key and a CA together",
                hint="give --transport-tls-cert, --transport-tls-key and --transport-tls-ca, or none of them",
            )
        if self.heartbeat < 0:
            raise ConfigError(f"the tcp heartbeat must be 0 (off) or a number of seconds, not {self.heartbeat}")
        self._contexts: dict[bool, ssl.SSLContext] = {}

    @classmethod
    def from_settings(cls, settings: TcpSettings) -> TcpTransport:
        """The transport the settings describe (the CLI's, or ``TcpSettings()`` for the defaults).

        ``settings.options["advertise_host"]`` (``worker --advertise-host``), when given, replaces
        ``settings.advertise_host``.
        """
        return cls(
            advertise_host=settings.options.get("advertise_host") or settings.advertise_host,
            max_frame_size=settings.max_frame_size,
            connect_timeout=settings.connect_timeout,
            heartbeat=settings.heartbeat,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            tls_ca=settings.tls_ca,
            token=settings.token,
        )

    def with_settings(self, settings: TransportSettings) -> TcpTransport:
        """This transport with the common settings' TLS files, token and heartbeat (and advertised host)."""
        return replace(
            self,
            advertise_host=settings.options.get("advertise_host") or self.advertise_host,
            heartbeat=settings.heartbeat,
            tls_cert=settings.tls_cert,
            tls_key=settings.tls_key,
            tls_ca=settings.tls_ca,
            token=settings.token,
        )

    @property
    def _token(self) -> bytes | None:
        return self.token.encode() if self.token else None

    def _tls(self, server_side: bool) -> ssl.SSLContext | None:
        if not (self.tls_cert and self.tls_key and self.tls_ca):
            return None
        context = self._contexts.get(server_side)
        if context is None:
            make = server_context if server_side else client_context
            context = self._contexts[server_side] = make(self.tls_cert, self.tls_key, self.tls_ca)
        return context

    def server(self, host: str = "127.0.0.1", port: int = 0) -> TcpServer:
        """A server bound to ``host``:``port`` once started."""
        return TcpServer(
            host,
            port,
            advertise_host=self.advertise_host,
            max_frame=self.max_frame_size,
            tls=self._tls(server_side=True),
            token=self._token,
        )

    def client(self) -> TcpClient:
        """A client with its own connections."""
        return TcpClient(
            connect_timeout=self.connect_timeout,
            max_frame=self.max_frame_size,
            heartbeat=self.heartbeat,
            tls=self._tls(server_side=False),
            token=self._token,
        )
