"""The ``nats`` transport plugin: requests and streamed responses over NATS subjects (extra ``nats``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_transport_nats.options import NatsTransportSettings

if TYPE_CHECKING:
    from dynamo_triton.registry import TransportRegister


def _factory(settings: NatsTransportSettings) -> Any:
    """The transport ``settings`` describe (see :meth:`NatsTransport.from_settings`)."""
    from dynamo_triton.plugins import import_optional

    import_optional("nats", extra="nats", purpose="the nats transport")  # the pip hint now, not at first call
    from dyntriton_transport_nats.transport import NatsTransport

    return NatsTransport.from_settings(settings)


@hookimpl
def dyntriton_register_transports(register: TransportRegister) -> None:
    register(
        "nats",
        _factory,
        settings=NatsTransportSettings,
        summary="NATS subjects (--nats-server); chunks past max_payload; TLS and credentials",
    )
