"""The ``nats`` transport plugin: requests and streamed responses over NATS subjects (extra ``nats``)."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any = None) -> Any:
    """The transport from the environment; the CLI's TransportSettings (TLS files, token) win over it."""
    from dynamo_triton.plugins import import_optional

    import_optional("nats", extra="nats", purpose="the nats transport")  # the pip hint now, not at first call
    from dyntriton_transport_nats.transport import NatsTransport

    return NatsTransport.from_settings(settings)


@hookimpl
def dyntriton_register_transports(register: Register) -> None:
    register("nats", _factory, summary="NATS subjects (NATS_SERVER); chunks past max_payload; TLS and credentials")
