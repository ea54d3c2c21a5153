"""The ``tcp`` transport plugin: asyncio streams between frontend and worker processes."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register
from dynamo_triton.transport import TransportSettings


def _factory(settings: TransportSettings | None = None) -> Any:
    from dyntriton_transport_tcp.transport import TcpTransport

    transport = TcpTransport.from_env()
    return transport if settings is None else transport.with_settings(settings)


@hookimpl
def dyntriton_register_transports(register: Register) -> None:
    register(
        "tcp",
        _factory,
        summary="asyncio tcp, length-prefixed frames, many requests per connection, heartbeats, TLS (default)",
    )
