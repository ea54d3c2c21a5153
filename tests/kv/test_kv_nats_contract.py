"""The nats store passes the KV contract on a real nats-server's JetStream KV."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from dynamo_triton.kv import KVStore
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.kv_contract import KVStoreContract


class TestNatsStore(KVStoreContract):
    @pytest.fixture
    async def kv_store(self, nats_server: str) -> AsyncIterator[KVStore]:
        # A bucket per test: the session's server is shared, and an empty bucket is a fresh store.
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        store = make_plugin_manager().kv_store("nats", servers=nats_server, bucket=bucket, storage="memory")
        yield store
        if store._js is not None:  # type: ignore[attr-defined]
            await store._js.delete_key_value(bucket)  # type: ignore[attr-defined]
        await store.close()
