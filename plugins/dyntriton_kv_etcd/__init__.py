"""The ``etcd`` KV store plugin: etcd v3 through the asyncio client etcd3aio (extra ``etcd``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_kv_etcd.options import EtcdOptions

if TYPE_CHECKING:
    from dynamo_triton.registry import KVStoreRegister


def _factory(settings: EtcdOptions) -> Any:
    from dyntriton_kv_etcd.store import EtcdSettings, EtcdStore

    return EtcdStore(EtcdSettings.from_options(settings.as_options()))


@hookimpl
def dyntriton_register_kv_stores(register: KVStoreRegister) -> None:
    register(
        "etcd",
        _factory,
        settings=EtcdOptions,
        summary="etcd v3 cluster (--etcd-endpoints); TLS and user/password",
    )
