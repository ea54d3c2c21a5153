"""The ``nats`` KV store plugin: a NATS JetStream key-value bucket, leases swept by the clients (extra ``nats``)."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any) -> Any:
    from dyntriton_kv_nats.store import NatsKVSettings, NatsStore

    return NatsStore(NatsKVSettings.from_options(settings.options))


@hookimpl
def dyntriton_register_kv_stores(register: Register) -> None:
    register("nats", _factory, summary="NATS JetStream KV bucket (NATS_SERVER); TLS and credentials")
