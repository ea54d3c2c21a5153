"""The tcp transport object: makes servers and clients sharing one configuration."""

from __future__ import annotations

import os
from dataclasses import dataclass

from dyntriton_transport_tcp.client import TcpClient
from dyntriton_transport_tcp.frames import DEFAULT_MAX_FRAME
from dyntriton_transport_tcp.server import TcpServer

__all__ = ["TcpTransport"]


@dataclass
class TcpTransport:
    """Asyncio tcp with length-prefixed frames; see :mod:`dyntriton_transport_tcp.frames`.

    :param advertise_host: host to advertise when bound to a wildcard (default: this host's address).
    :param max_frame_size: largest frame in bytes, both directions.
    :param connect_timeout: seconds a client waits for a connection before PeerGoneError.
    """

    advertise_host: str | None = None
    max_frame_size: int = DEFAULT_MAX_FRAME
    connect_timeout: float = 3.0
    name: str = "tcp"

    @classmethod
    def from_env(cls) -> TcpTransport:
        """Settings from the environment.

        ``DYNTRITON_TCP_ADVERTISE_HOST``, ``DYNTRITON_TCP_MAX_FRAME`` (bytes) and
        ``DYNTRITON_TCP_CONNECT_TIMEOUT`` (seconds); unset ones keep their defaults.
        """
        return cls(
            advertise_host=os.environ.get("DYNTRITON_TCP_ADVERTISE_HOST") or None,
            max_frame_size=int(os.environ.get("DYNTRITON_TCP_MAX_FRAME", DEFAULT_MAX_FRAME)),
            connect_timeout=float(os.environ.get("DYNTRITON_TCP_CONNECT_TIMEOUT", 3.0)),
        )

    def server(self, host: str = "127.0.0.1", port: int = 0) -> TcpServer:
        """A server bound to ``host``:``port`` once started."""
        return TcpServer(host, port, advertise_host=self.advertise_host, max_frame=self.max_frame_size)

    def client(self) -> TcpClient:
        """A client with its own connections."""
        return TcpClient(connect_timeout=self.connect_timeout, max_frame=self.max_frame_size)
