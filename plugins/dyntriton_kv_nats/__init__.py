"""The ``nats`` KV store plugin: a NATS JetStream key-value bucket, leases swept by the clients (extra ``nats``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_kv_nats.options import NatsKVOptions

if TYPE_CHECKING:
    from dynamo_triton.registry import KVStoreRegister


def _factory(settings: NatsKVOptions) -> Any:
    from dyntriton_kv_nats.store import NatsKVSettings, NatsStore

    return NatsStore(NatsKVSettings.from_options(settings.as_options()))


@hookimpl
def dyntriton_register_kv_stores(register: KVStoreRegister) -> None:
    register(
        "nats",
        _factory,
        settings=NatsKVOptions,
        summary="NATS JetStream KV bucket (--nats-server); TLS and credentials",
    )
