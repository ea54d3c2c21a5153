"""nats-store-only behaviour: how keys are spelled, leases swept by another process's store, orphans,
keep-alives that other sweepers respect, unreachable NATS, a server without JetStream, the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from dyntriton_kv_nats.keys import decode_key, encode_key, prefix_filter
from hypothesis import given
from hypothesis import strategies as st

from dynamo_triton.errors import StoreUnavailableError
from dynamo_triton.kv import EventKind, KVStore
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.kv_contract import next_event
from dynamo_triton.testing.nats import run_nats

NATS_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what JetStream KV accepts (nats-py's check)
TTL = 1.0


@given(st.text())
def test_any_key_is_a_valid_bucket_key_and_comes_back(key: str) -> None:
    encoded = encode_key(key)
    assert NATS_KEY.fullmatch(encoded) and ".." not in encoded and not encoded.endswith(".")
    assert decode_key(encoded) == key


def test_keys_read_well_and_prefixes_become_subject_filters() -> None:
    assert encode_key("dyntriton/v1/dynamo/models/identity/7f3a") == "k.dyntriton.v1.dynamo.models.identity.7f3a"
    assert encode_key("a b/") == "k.a=20b.="
    assert prefix_filter("dyntriton/v1/") == ("k.dyntriton.v1.>", True)
    assert prefix_filter("m") == ("k.>", False)


@pytest.fixture
async def make_store(nats_server: str) -> AsyncIterator[Callable[..., KVStore]]:
    """``make_store()`` opens another store (another process, as far as NATS knows) on one fresh bucket."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    stores: list[KVStore] = []

    def make(**options: object) -> KVStore:
        store = make_plugin_manager().kv_store("nats", servers=nats_server, bucket=bucket, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:  # close is idempotent: tests close some themselves
        await store.close()


async def test_prefix_that_ends_inside_a_segment(make_store) -> None:
    store = make_store()
    for key in ("m/a", "mx", "m", "n/a"):
        await store.put(key, b"v")
    assert [e.key for e in await store.list("m")] == ["m", "m/a", "mx"]
    async with store.watch("m") as watch:
        await store.put("n/b", b"ignored")
        await store.put("my", b"seen")
        event = await next_event(watch, 5)
        assert (event.kind, event.key) == (EventKind.PUT, "my")


async def test_a_dead_owners_lease_is_expired_by_another_store(make_store) -> None:
    owner, survivor = make_store(), make_store()
    lease = await owner.grant_lease(TTL)
    await owner.put("cards/w1", b"card", lease=lease)
    async with survivor.watch("cards/") as watch:
        assert [e.key for e in watch.snapshot] == ["cards/w1"]
        await owner.close()  # like a crash: no revoke, no more keep-alives, its sweeper gone
        event = await next_event(watch, TTL * 3 + 5)
        assert (event.kind, event.key) == (EventKind.DELETE, "cards/w1")


async def test_keep_alives_are_respected_by_other_sweepers(make_store) -> None:
    owner, other = make_store(), make_store()
    await other.list("")  # connected: its sweeper follows the bucket
    lease = await owner.grant_lease(TTL)
    await owner.put("cards/w1", b"card", lease=lease)
    async with other.watch("cards/") as watch:
        for _ in range(9):  # three TTLs of keep-alives
            await asyncio.sleep(TTL / 3)
            await owner.keep_alive(lease)
        assert watch._queue.empty(), "a lease kept alive must not expire anywhere"  # type: ignore[attr-defined]
    assert await other.get("cards/w1") is not None


async def test_a_key_put_under_an_ended_lease_is_deleted_by_the_sweepers(make_store, nats_server: str) -> None:
    import nats

    store = make_store()
    async with store.watch("cards/") as watch:
        # What a put racing with its lease's expiry leaves behind: a key naming a lease that is gone.
        nc = await nats.connect(nats_server)
        js = nc.jetstream()
        await js.publish(f"$KV.{store.settings.bucket}.k.cards.late", b"x", headers={"Dyn-Lease": "abc123"})
        await nc.close()
        put = await next_event(watch, 5)
        deleted = await next_event(watch, 5)
        assert (put.kind, deleted.kind, deleted.key) == (EventKind.PUT, EventKind.DELETE, "cards/late")


async def test_unreachable_nats_is_store_unavailable_naming_the_server() -> None:
    store = make_plugin_manager().kv_store("nats", servers="nats://127.0.0.1:1", timeout=1)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.list("")
    assert "nats://127.0.0.1:1" in str(caught.value) and "nats-server" in str(caught.value.hint)
    await store.close()


async def test_a_server_without_jetstream_says_to_enable_it(tmp_path: Path) -> None:
    with run_nats(tmp_path, jetstream=False) as server:
        store = make_plugin_manager().kv_store("nats", servers=server.url, timeout=2)
        with pytest.raises(StoreUnavailableError) as caught:
            await store.get("x")
        assert "no JetStream" in str(caught.value) and "-js" in str(caught.value.hint)
        await store.close()


def test_store_cli_on_nats(nats_server: str) -> None:
    bucket = f"cli-{uuid.uuid4().hex[:8]}"

    async def seed() -> None:
        store = make_plugin_manager().kv_store("nats", servers=nats_server, bucket=bucket)
        await store.put("dyntriton/v1/x/models/m/1", b'{"a": 1}')
        await store.close()

    asyncio.run(seed())
    env = {**os.environ, "DYN_NATS_KV_BUCKET": bucket}
    env.pop("NATS_SERVER", None)
    store_ls = [sys.executable, "-m", "dynamo_triton", "store", "ls", "--store-kv", "nats"]
    # The server from the environment, from --nats-server after `ls`, and before it.
    for argv, extra_env in (
        (store_ls, {"NATS_SERVER": nats_server}),
        ([*store_ls, "--nats-server", nats_server], {}),
        ([*store_ls[:4], "--nats-server", nats_server, *store_ls[4:]], {}),
    ):
        listed = subprocess.run(argv, env={**env, **extra_env}, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == ["dyntriton/v1/x/models/m/1"], argv
