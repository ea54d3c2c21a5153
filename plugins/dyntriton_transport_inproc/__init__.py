"""The ``inproc`` transport plugin: frontend and workers in one process, no sockets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dynamo_triton.transport import TransportSettings

if TYPE_CHECKING:
    from dynamo_triton.registry import TransportRegister


def _factory(settings: TransportSettings) -> Any:
    if settings.secured:
        from dynamo_triton.errors import ConfigError

        raise ConfigError(
            "transport 'inproc' cannot use TLS or a token: nothing leaves the process",
            hint="use --transport tcp, or drop --transport-tls-*/--transport-token",
        )
    from dyntriton_transport_inproc.transport import InprocTransport

    return InprocTransport()


@hookimpl
def dyntriton_register_transports(register: TransportRegister) -> None:
    register(
        "inproc",
        _factory,
        settings=TransportSettings,
        traits=("in-process",),
        summary="in-process calls, no sockets; for serve in one process",
    )
