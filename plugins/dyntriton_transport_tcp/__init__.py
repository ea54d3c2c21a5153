"""The ``tcp`` transport plugin: asyncio streams between frontend and worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynamo_triton import hookimpl
from dyntriton_transport_tcp.options import TcpSettings

if TYPE_CHECKING:
    from dynamo_triton.registry import TransportRegister
    from dyntriton_transport_tcp.transport import TcpTransport


def _factory(settings: TcpSettings) -> TcpTransport:
    from dyntriton_transport_tcp.transport import TcpTransport

    return TcpTransport.from_settings(settings)


@hookimpl
def dyntriton_register_transports(register: TransportRegister) -> None:
    register(
        "tcp",
        _factory,
        settings=TcpSettings,
        traits=("default",),
        summary="asyncio tcp, length-prefixed frames, many requests per connection, heartbeats, TLS (default)",
    )
