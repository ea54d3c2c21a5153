"""The ``tcp`` transport plugin: asyncio streams between frontend and worker processes."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory() -> Any:
    from dyntriton_transport_tcp.transport import TcpTransport

    return TcpTransport.from_env()


@hookimpl
def dyntriton_register_transports(register: Register) -> None:
    register("tcp", _factory, summary="asyncio tcp, length-prefixed frames, many requests per connection (default)")
