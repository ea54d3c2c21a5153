"""The tcp transport's settings: the common request-plane ones plus frame size, connect timeout, advertised host."""

from __future__ import annotations

from dataclasses import dataclass

import click

from dynamo_triton.settings import setting
from dynamo_triton.transport import TransportSettings
from dyntriton_transport_tcp.frames import DEFAULT_MAX_FRAME

__all__ = ["TcpSettings"]


@dataclass(frozen=True)
class TcpSettings(TransportSettings):
    """What ``factory(settings)`` of the tcp transport receives.

    :param advertise_host: host published in model cards when bound to a wildcard (default: this
        host's address); ``worker --advertise-host`` (``options["advertise_host"]``) wins over it.
    :param max_frame_size: largest frame in bytes, both directions.
    :param connect_timeout: seconds a client waits for a connection (TLS and token included).
    """

    __panel__ = "tcp transport"

    advertise_host: str | None = setting(
        None,
        "--tcp-advertise-host",
        envvar="DYNTRITON_TCP_ADVERTISE_HOST",
        hidden=True,
        help="Host a worker publishes for frontends to dial (prefer the worker's --advertise-host).",
    )
    max_frame_size: int = setting(
        DEFAULT_MAX_FRAME,
        "--tcp-max-frame",
        envvar="DYNTRITON_TCP_MAX_FRAME",
        type=click.IntRange(min=1024),
        help="Largest tcp frame, in bytes, either way (a request or response part).",
    )
    connect_timeout: float = setting(
        3.0,
        "--tcp-connect-timeout",
        envvar="DYNTRITON_TCP_CONNECT_TIMEOUT",
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds a frontend waits to connect to a worker (TLS and token included).",
    )
