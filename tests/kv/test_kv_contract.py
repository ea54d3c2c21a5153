"""Every shipped store passes the one KV contract (etcd against a real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamo_triton.kv import KVStore
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.kv_contract import KVStoreContract


class TestMemStore(KVStoreContract):
    @pytest.fixture
    async def kv_store(self, request: pytest.FixtureRequest) -> AsyncIterator[KVStore]:
        store = make_plugin_manager().kv_store("mem", space=request.node.nodeid)
        yield store
        await store.close()


class TestFileStore(KVStoreContract):
    @pytest.fixture
    async def kv_store(self, tmp_path: Path) -> AsyncIterator[KVStore]:
        store = make_plugin_manager().kv_store("file", root=str(tmp_path / "kv"))
        yield store
        await store.close()


class TestEtcdStore(KVStoreContract):
    @pytest.fixture
    async def kv_store(self, etcd_server: str, request: pytest.FixtureRequest) -> AsyncIterator[KVStore]:
        store = make_plugin_manager().kv_store("etcd", endpoints=etcd_server)
        # Each test gets a clean keyspace: etcd is shared by the session.
        for entry in await store.list(""):
            await store.delete(entry.key)
        yield store
        await store.close()
