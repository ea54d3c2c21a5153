"""Store resync: a store that forgot everything (wiped etcd, file store folder removed) is re-listed and re-filled.

Real etcd processes (wiped with :class:`~dynamo_triton.testing.etcd_node.EtcdNode`: stopped, data
deleted, a fresh etcd on the same URL) and real file stores; real Workers (``inproc`` transport,
a two-model backend) and a real routing table. Nothing sleeps to synchronise: the tests wait for
watch events, lease callbacks and table changes, each with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.backend import ModelInfo
from dynamo_triton.errors import LeaseExpiredError, StoreError
from dynamo_triton.kv import KVStore
from dynamo_triton.leases import LeaseKeeper
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.cards import ModelCard, card_key
from dynamo_triton.runtime.discovery import ModelTable
from dynamo_triton.runtime.worker import Worker, WorkerSettings
from dynamo_triton.testing.etcd import EtcdNotInstalled
from dynamo_triton.testing.etcd_node import EtcdNode
from dynamo_triton.testing.wait import until

pytestmark = pytest.mark.etcd


class TwoModels:
    """A backend serving ``a`` and ``b`` (enough for a Worker to register cards)."""

    async def start(self) -> None:
        pass

    async def stop(self, *, timeout: float = 30.0) -> None:
        pass

    async def repository_index(self) -> list[str]:
        return ["a", "b"]

    async def load_model(self, name: str, **_: Any) -> ModelInfo:
        config = model_config_pb2.ModelConfig(name=name, max_batch_size=8)
        return ModelInfo(name, "1", config, service_pb2.ModelMetadataResponse(name=name, versions=["1"]))

    def server_identity(self) -> tuple[str, str]:
        return ("triton", "2.51.0")

    async def ready(self) -> bool:
        return True

    async def infer_serialized(self, request: service_pb2.ModelInferRequest, raw_inputs: Any = None) -> Any:
        yield service_pb2.ModelInferResponse(model_name=request.model_name).SerializeToString()

    async def statistics(self, name: str = "") -> Any:
        return service_pb2.ModelStatisticsResponse()


@pytest.fixture
def etcd(tmp_path: Path) -> Any:
    try:
        node = EtcdNode(tmp_path / "etcd")
    except EtcdNotInstalled as exc:
        pytest.skip(str(exc))
    with node:
        yield node


@pytest.fixture
async def etcd_store(etcd: EtcdNode) -> AsyncIterator[KVStore]:
    store = make_plugin_manager(env={}).kv_store("etcd", endpoints=etcd.url, timeout=2)
    yield store
    await store.close()


async def test_an_etcd_watch_ends_when_etcd_is_wiped(etcd: EtcdNode, etcd_store: KVStore) -> None:
    for index in range(20):  # the old store's revision is well above the fresh one's
        await etcd_store.put(f"w/{index}", b"x")
    async with etcd_store.watch("w/") as watch:
        assert len(watch.snapshot) == 20
        await asyncio.to_thread(etcd.wipe)
        # Usually the resumed watch meets the fresh store and sees its revision went back; when the
        # stream broke with a non-transient error instead, the watch ends at once. Never silence.
        with pytest.raises(StoreError, match=r"revision went back from 21 to 1: the store was wiped|watch on etcd"):
            async with asyncio.timeout(20):
                async for event in watch:
                    pytest.fail(f"a watch resumed on a wiped etcd must not deliver events: {event}")


async def test_an_etcd_watch_starts_over_when_etcd_comes_back(etcd: EtcdNode, etcd_store: KVStore) -> None:
    """Even with its data: a watch resumed after an outage cannot tell a wiped etcd that caught up."""
    await etcd_store.put("w/old", b"x")
    async with etcd_store.watch("w/") as watch:
        await asyncio.to_thread(etcd.stop)
        await asyncio.to_thread(etcd.start)
        with pytest.raises(StoreError, match=r"reachable again; the watch on 'w/' starts over|watch on etcd"):
            async with asyncio.timeout(20):
                async for event in watch:
                    pytest.fail(f"no event was written: {event}")
    async with etcd_store.watch("w/") as watch:  # a new watch lists what etcd kept
        assert [entry.key for entry in watch.snapshot] == ["w/old"]


async def test_a_lease_of_a_wiped_etcd_is_reported_lost(etcd: EtcdNode, etcd_store: KVStore) -> None:
    lost = asyncio.Event()
    keeper = LeaseKeeper(etcd_store, 2.0, on_lost=lost.set)
    await keeper.start()
    assert keeper.lease_id is not None
    await asyncio.to_thread(etcd.wipe)
    await asyncio.wait_for(lost.wait(), 10)
    with pytest.raises(LeaseExpiredError):
        await etcd_store.keep_alive(keeper.lease_id)
    await keeper.close(revoke=False)


async def resynced_worker(
    store: KVStore, wipe: Callable[[], Any], caplog: pytest.LogCaptureFixture, resynced: str
) -> float:
    """A worker and a routing table on ``store``; ``wipe()`` the store; seconds until the table has it back.

    :param resynced: the log text that says the table's watch caught up with the new store.
    """
    plugins = make_plugin_manager(env={})
    table = ModelTable(store, "dynamo")
    await table.start()
    worker = Worker(TwoModels(), store, plugins.transport("inproc"), WorkerSettings(lease_ttl=2.0))
    try:
        await worker.start()
        key = {("a", worker.instance_id), ("b", worker.instance_id)}
        cards = lambda: {(inst.card.model, inst.instance_id) for inst in table.all_instances()}  # noqa: E731
        await until(lambda: cards() == key, 10, "the worker's cards in the table")
        await asyncio.to_thread(wipe)
        wiped = time.monotonic()
        # The worker notices its lease is gone and puts its cards again; the table follows.
        await until(lambda: "registered again" in caplog.text, 15, "the worker to register again")
        await until(lambda: resynced in caplog.text, 15, f"the log line {resynced!r}")
        await until(lambda: cards() == key, 15, "the worker's cards back in the table")
        assert {entry.key.rsplit("/", 2)[-2] for entry in await store.list("dyntriton/v1/dynamo/models/")} == {
            "a",
            "b",
        }
        return time.monotonic() - wiped
    finally:
        await worker.stop()
        await table.stop()


async def test_a_worker_registers_again_and_the_table_re_lists_after_etcd_is_wiped(
    etcd: EtcdNode, etcd_store: KVStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for index in range(20):
        await etcd_store.put(f"noise/{index}", b"x")  # the old revision is above what the fresh store reaches
    took = await resynced_worker(etcd_store, etcd.wipe, caplog, "re-listed dyntriton/v1/dynamo")
    relisted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("re-listed dyntriton/v1/dynamo")]
    assert relisted and all(r.levelno == logging.WARNING for r in caplog.records if "re-listed" in r.getMessage())
    print(f"etcd wiped: the worker's cards were back in the routing table after {took:.2f} s")
    assert took < 10


async def test_a_worker_registers_again_after_the_file_store_folder_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    root = tmp_path / "kv"
    store = make_plugin_manager(env={}).kv_store("file", root=str(root))
    try:
        took = await resynced_worker(store, lambda: shutil.rmtree(root), caplog, "exists again")
    finally:
        await store.close()
    assert "was removed" in caplog.text and "exists again" in caplog.text, caplog.text
    print(f"file store folder removed: the worker's cards were back in the routing table after {took:.2f} s")
    assert took < 10


def card(instance_id: str, lease_ttl: float) -> bytes:
    return ModelCard(
        model="a",
        version="1",
        instance_id=instance_id,
        address=f"inproc://{instance_id}",
        transport="inproc",
        decoupled=False,
        config={"name": "a"},
        metadata={"name": "a"},
        worker={"lease_ttl": lease_ttl},
    ).to_json()


async def test_instances_missing_from_a_re_list_stay_for_their_lease_ttl(
    etcd: EtcdNode, etcd_store: KVStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A wiped store costs no request: cards not re-put yet stay routable for their lease TTL."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    table = ModelTable(etcd_store, "dynamo")
    await table.start()
    try:
        for instance_id in ("gone", "back"):
            await etcd_store.put(card_key("dynamo", "a", instance_id), card(instance_id, 2.0))
        await until(lambda: len(table.instances("a")) == 2, 10, "both cards in the table")
        present: list[int] = []
        table.subscribe(lambda: present.append(len(table.instances("a"))))
        await asyncio.to_thread(etcd.wipe)
        await until(lambda: "re-listed" in caplog.text, 15, "the re-list")
        relisted = loop.time()
        assert "2 missing from the store" in caplog.text, caplog.text
        assert len(table.instances("a")) == 2, "kept while their workers register again"
        await etcd_store.put(card_key("dynamo", "a", "back"), card("back", 2.0))  # its worker registers again
        await until(lambda: table.instance("a", "gone") is None, 5, "the missing card to go")
        assert 1.5 < loop.time() - relisted < 3.0, "one lease TTL (2 s) after the re-list"
        assert "instance gone at inproc://gone did not register again" in caplog.text
        back = table.instance("a", "back")
        assert back is not None and back.missing_until is None
        assert min(present) >= 1 and present[-1] == 1, present
    finally:
        await table.stop()
