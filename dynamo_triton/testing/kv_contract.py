"""The KV store contract, as a test class any store plugin can run.

Subclass :class:`KVStoreContract` in a test module and provide a ``kv_store``
fixture that yields a fresh, empty store (and closes it)::

    import pytest
    from dynamo_triton.testing.kv_contract import KVStoreContract

    class TestMyStore(KVStoreContract):
        @pytest.fixture
        async def kv_store(self, tmp_path):
            store = MyStore(tmp_path)
            yield store
            await store.close()

Set ``lease_ttl`` on the subclass if the store cannot honour short leases
(default 1 s) and ``watch_timeout`` for slow watches (default 5 s). Needs
pytest-asyncio in auto mode (or mark the tests yourself).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dynamo_triton.errors import LeaseExpiredError
from dynamo_triton.kv import EventKind, KVStore, Watch, WatchEvent

__all__ = ["KVStoreContract", "next_event"]


async def next_event(watch: Watch, timeout: float) -> WatchEvent:
    """The watch's next event, or fail the test after ``timeout`` seconds."""
    iterator = watch.__aiter__()
    try:
        return await asyncio.wait_for(iterator.__anext__(), timeout)
    except TimeoutError:
        pytest.fail(f"no watch event within {timeout} s")


class KVStoreContract:
    """Behaviour every KVStore must have (see dynamo_triton/kv.py)."""

    lease_ttl: float = 1.0
    watch_timeout: float = 5.0

    async def test_put_get_delete(self, kv_store: KVStore) -> None:
        assert await kv_store.get("a/b") is None
        first = await kv_store.put("a/b", b"one")
        second = await kv_store.put("a/b", b"two")
        assert second > first
        entry = await kv_store.get("a/b")
        assert entry is not None and entry.value == b"two" and entry.key == "a/b"
        assert await kv_store.delete("a/b") is True
        assert await kv_store.delete("a/b") is False
        assert await kv_store.get("a/b") is None

    async def test_values_are_bytes_and_survive_any_content(self, kv_store: KVStore) -> None:
        value = bytes(range(256)) * 4 + b"\n\x00{}"
        await kv_store.put("bin", value)
        entry = await kv_store.get("bin")
        assert entry is not None and entry.value == value
        await kv_store.put("empty", b"")
        entry = await kv_store.get("empty")
        assert entry is not None and entry.value == b""

    async def test_list_by_prefix_is_sorted_and_exact(self, kv_store: KVStore) -> None:
        for key in ("m/b", "m/a", "m/c/d", "n/a", "mx"):
            await kv_store.put(key, key.encode())
        assert [e.key for e in await kv_store.list("m/")] == ["m/a", "m/b", "m/c/d"]
        assert [e.value for e in await kv_store.list("n/")] == [b"n/a"]
        assert await kv_store.list("zzz/") == []

    async def test_keys_with_odd_characters(self, kv_store: KVStore) -> None:
        key = "models/my model:v1/ä%2F.."
        await kv_store.put(key, b"x")
        assert [e.key for e in await kv_store.list("models/")] == [key]

    async def test_create_if_absent(self, kv_store: KVStore) -> None:
        assert await kv_store.create("lock", b"first") is True
        assert await kv_store.create("lock", b"second") is False
        entry = await kv_store.get("lock")
        assert entry is not None and entry.value == b"first"

    async def test_watch_gives_snapshot_then_puts_and_deletes(self, kv_store: KVStore) -> None:
        await kv_store.put("w/existing", b"0")
        await kv_store.put("other/x", b"0")
        async with kv_store.watch("w/") as watch:
            assert [(e.key, e.value) for e in watch.snapshot] == [("w/existing", b"0")]
            await kv_store.put("w/new", b"1")
            await kv_store.put("other/y", b"ignored")
            event = await next_event(watch, self.watch_timeout)
            assert (event.kind, event.key, event.value) == (EventKind.PUT, "w/new", b"1")
            await kv_store.delete("w/existing")
            event = await next_event(watch, self.watch_timeout)
            assert (event.kind, event.key) == (EventKind.DELETE, "w/existing")

    async def test_watch_misses_nothing_written_right_after_the_snapshot(self, kv_store: KVStore) -> None:
        async with kv_store.watch("r/") as watch:
            for i in range(5):
                await kv_store.put(f"r/{i}", str(i).encode())
            seen: dict[str, bytes | None] = {}
            deadline = time.monotonic() + self.watch_timeout
            while len(seen) < 5 and time.monotonic() < deadline:
                event = await next_event(watch, self.watch_timeout)
                seen[event.key] = event.value
            assert seen == {f"r/{i}": str(i).encode() for i in range(5)}

    async def test_lease_keys_vanish_on_revoke_and_watchers_see_it(self, kv_store: KVStore) -> None:
        lease = await kv_store.grant_lease(30)
        await kv_store.put("l/a", b"x", lease=lease)
        async with kv_store.watch("l/") as watch:
            assert [e.key for e in watch.snapshot] == ["l/a"]
            await kv_store.revoke_lease(lease)
            event = await next_event(watch, self.watch_timeout)
            assert (event.kind, event.key) == (EventKind.DELETE, "l/a")
        assert await kv_store.get("l/a") is None
        with pytest.raises(LeaseExpiredError):
            await kv_store.put("l/b", b"x", lease=lease)

    async def test_keep_alive_extends_and_expiry_deletes(self, kv_store: KVStore) -> None:
        ttl = self.lease_ttl
        lease = await kv_store.grant_lease(ttl)
        await kv_store.put("e/a", b"x", lease=lease)
        await kv_store.put("e/keep", b"y")
        for _ in range(4):
            await asyncio.sleep(ttl / 3)
            await kv_store.keep_alive(lease)
        assert await kv_store.get("e/a") is not None, "keep-alive must keep the lease's keys"
        async with kv_store.watch("e/") as watch:
            event = await next_event(watch, ttl * 3 + self.watch_timeout)
            assert (event.kind, event.key) == (EventKind.DELETE, "e/a")
        assert await kv_store.get("e/keep") is not None, "keys without a lease stay"
        with pytest.raises(LeaseExpiredError):
            await kv_store.keep_alive(lease)

    async def test_revoking_an_unknown_lease_is_harmless(self, kv_store: KVStore) -> None:
        await kv_store.revoke_lease(123456789)

    async def test_close_is_idempotent(self, kv_store: KVStore) -> None:
        await kv_store.close()
        await kv_store.close()
