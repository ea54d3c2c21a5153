"""The sqlite store passes dyntriton's KV contract, exactly like the shipped stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.kv_contract import KVStoreContract


class TestSqliteStore(KVStoreContract):
    @pytest.fixture
    async def kv_store(self, tmp_path: Path) -> AsyncIterator[object]:
        # Through the plugin manager, as users get it: proves the entry point is installed.
        plugins = make_plugin_manager()
        if "sqlite" not in plugins.names("kv-store"):
            pytest.fail("dyntriton-kv-sqlite is not installed; run `pip install ./examples/dyntriton-kv-sqlite` first")
        store = plugins.kv_store("sqlite", path=str(tmp_path / "kv.sqlite"))
        yield store
        await store.close()
