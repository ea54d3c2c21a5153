"""The ``etcd`` KV store plugin: etcd v3 through the asyncio client etcd3aio (extra ``etcd``)."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any) -> Any:
    from dyntriton_kv_etcd.store import EtcdSettings, EtcdStore

    return EtcdStore(EtcdSettings.from_options(settings.options))


@hookimpl
def dyntriton_register_kv_stores(register: Register) -> None:
    register("etcd", _factory, summary="etcd v3 cluster (ETCD_ENDPOINTS); TLS and user/password")
