"""``collect``: cards from a real (mem) store, ``/stats`` from real system ports, states and their reasons.

A worker frozen by SIGSTOP keeps its listening socket: the kernel still completes connections
into its backlog, but nothing answers. A listening socket nobody accepts from is exactly that,
seen from outside, so it stands for the frozen worker here (the e2e test freezes a real one).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.backend import ModelInfo
from dynamo_triton.cli.status_view import render_status
from dynamo_triton.cli.top_cmd import RateHistory, render_top
from dynamo_triton.errors import ConfigError
from dynamo_triton.kv import EventKind, KVStore
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.cards import ModelCard, card_key, models_prefix
from dynamo_triton.runtime.cluster_status import (
    STATUS_SCHEMA,
    ClusterStatus,
    ModelEntry,
    SystemPort,
    WorkerEntry,
    collect,
)
from dynamo_triton.runtime.discovery import ModelTable
from dynamo_triton.runtime.frontend_card import (
    FRONTEND_CARD_SCHEMA,
    FrontendCard,
    FrontendPublisher,
    frontend_card_key,
)
from dynamo_triton.runtime.service import RoutingService
from dynamo_triton.runtime.system_server import SystemServer
from dynamo_triton.runtime.worker import Worker, WorkerSettings
from dynamo_triton.runtime.worker_card import WorkerCard, published_host, worker_card_key, workers_prefix
from dynamo_triton.runtime.worker_metrics import WorkerMetrics
from dynamo_triton.testing.ports import free_port

NS = "dynamo"
IDENTITY_CONFIG = {
    "name": "identity",
    "backend": "python",
    "max_batch_size": 8,
    "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    "dynamic_batching": {},
}


@pytest.fixture
async def store() -> AsyncIterator[KVStore]:
    kv = make_plugin_manager().kv_store("mem", space=f"status-{uuid.uuid4().hex}")
    try:
        yield kv
    finally:
        await kv.close()


@pytest.fixture(params=["mem", "file", "etcd", "nats"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[KVStore, str]]:
    """Each store `status` reads across processes (and mem), with a namespace of this test's own."""
    options: dict[str, object] = {"mem": {"space": f"status-{uuid.uuid4().hex}"}, "file": {"root": str(tmp_path)}}.get(
        request.param, {}
    )
    if request.param == "etcd":
        options = {"endpoints": request.getfixturevalue("etcd_server")}
    if request.param == "nats":
        bucket = f"status{uuid.uuid4().hex[:8]}"
        options = {"servers": request.getfixturevalue("nats_server"), "bucket": bucket, "storage": "memory"}
    kv = make_plugin_manager().kv_store(request.param, **options)
    try:
        yield kv, f"status{uuid.uuid4().hex[:8]}"
    finally:
        await kv.close()


async def healthy() -> tuple[bool, dict[str, object]]:
    return True, {}


async def register(
    store: KVStore,
    instance_id: str,
    system_url: str,
    *,
    state: str = "serving",
    models: tuple[str, ...] = ("identity",),
    ns: str = NS,
) -> None:
    lease = await store.grant_lease(30)
    if state == "serving":
        for model in models:
            card = ModelCard(
                model=model,
                version="1",
                instance_id=instance_id,
                address=f"tcp://127.0.0.1:{free_port()}",
                transport="tcp",
                decoupled=False,
                config={**IDENTITY_CONFIG, "name": model},
                metadata={"name": model},
                worker={"host": socket.gethostname(), "pid": 4242},
            )
            await store.put(card_key(ns, model, instance_id), card.to_json(), lease=lease)
    worker = WorkerCard(
        instance_id=instance_id,
        state=state,
        address="tcp://127.0.0.1:1",
        transport="tcp",
        host=socket.gethostname(),
        pid=4242,
        started=time.time(),
        system_url=system_url,
        models=list(models),
        server_name="triton",
        server_version="2.51.0",
        lease_ttl=30,
    )
    await store.put(worker_card_key(ns, instance_id), worker.to_json(), lease=lease)


def frontend_card(frontend_id: str, *, unresponsive: list[str], updated: float) -> FrontendCard:
    load = {"in_flight": 1, "requests_per_second": 12.5, "errors": 0, "p50_ms": 0.8, "p99_ms": 3.0}
    return FrontendCard(
        frontend_id=frontend_id,
        host=socket.gethostname(),
        pid=99,
        started=updated - 100,
        updated=updated,
        interval=2.0,
        grpc="127.0.0.1:8787",
        http="127.0.0.1:8000",
        models={"identity": load},
        instances=3,
        unresponsive=unresponsive,
    )


async def test_states_loads_and_unreachable_ports_in_one_bounded_look(any_store: tuple[KVStore, str]) -> None:
    store, ns = any_store
    metrics = WorkerMetrics()
    server = SystemServer("127.0.0.1", 0, health=healthy, registry=metrics.registry)
    await server.start()
    for _ in range(7):
        with metrics.track("identity"):
            pass
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)  # accepts into its backlog, never answers: a SIGSTOPped process
    try:
        await register(store, "a" * 16, f"http://127.0.0.1:{server.port}", ns=ns)
        await register(store, "b" * 16, f"http://127.0.0.1:{frozen.getsockname()[1]}", ns=ns)
        await register(store, "c" * 16, f"http://127.0.0.1:{free_port()}", ns=ns)  # nothing listens: refused
        await register(store, "d" * 16, "", ns=ns)  # no system port
        await register(store, "e" * 16, f"http://127.0.0.1:{server.port}", state="draining", ns=ns)
        await register(store, "f" * 16, f"http://127.0.0.1:{server.port}", models=(), ns=ns)  # serves no model
        status = await collect(store, ns, timeout=0.5)
    finally:
        frozen.close()
        await server.stop()
    assert status.schema == STATUS_SCHEMA and status.store == store.name
    [model] = status.models
    workers = {w.instance_id[0]: w for w in model.workers}
    assert {k: w.state for k, w in workers.items()} == {
        "a": "serving",
        "b": "unresponsive",
        "c": "serving",
        "d": "serving",
        "e": "draining",
    }
    assert {k: w.system.status for k, w in workers.items()} == {
        "a": "ok",
        "b": "timeout",
        "c": "unreachable",
        "d": "none",
        "e": "ok",
    }
    assert workers["a"].load is not None and workers["a"].load["requests_total"] == 7
    assert workers["a"].load["requests"] == 7 and workers["a"].load["p50_ms"] is not None
    assert workers["b"].load is None and "no answer within 0.5 s" in workers["b"].system.error
    assert workers["a"].uptime_seconds is not None and workers["b"].uptime_seconds is None
    assert workers["c"].load is None and workers["c"].system.error == "unreachable: Connection refused"
    assert workers["a"].config is not None and workers["a"].config.instance_count == 2
    assert workers["a"].config.max_batch_size == 8 and workers["a"].config.dynamic_batching
    assert workers["a"].local and workers["a"].pid == 4242 and workers["a"].server_version == "2.51.0"
    assert workers["e"].config is None  # its model cards are withdrawn
    assert [w.instance_id[0] for w in status.workers_without_models] == ["f"]
    json.dumps(status.to_dict())  # the --json document


async def test_a_fresh_frontend_card_marks_what_its_transport_finds_silent(store: KVStore) -> None:
    metrics = WorkerMetrics()
    server = SystemServer("127.0.0.1", 0, health=healthy, registry=metrics.registry)
    await server.start()
    try:
        await register(store, "a" * 16, f"http://127.0.0.1:{server.port}")
        await register(store, "b" * 16, f"http://127.0.0.1:{server.port}")
        fresh = frontend_card("f1" * 8, unresponsive=["a" * 16], updated=time.time())
        stale = frontend_card("f2" * 8, unresponsive=["b" * 16], updated=time.time() - 60)
        for card in (fresh, stale):
            await store.put(frontend_card_key(NS, card.frontend_id), card.to_json())
        status = await collect(store, NS, timeout=0.5)
    finally:
        await server.stop()
    workers = {w.instance_id[0]: w for w in status.models[0].workers}
    assert workers["a"].state == "unresponsive" and workers["a"].unresponsive_to == ["f1" * 8]
    assert workers["b"].state == "serving"  # only a stale frontend says so
    assert [(f.frontend_id, f.stale) for f in status.frontends] == [("f1" * 8, False), ("f2" * 8, True)]
    assert status.frontends[0].models["identity"]["requests_per_second"] == 12.5


async def test_the_model_filter_keeps_only_those_models(store: KVStore) -> None:
    await register(store, "a" * 16, "", models=("identity", "simple"))
    status = await collect(store, NS, models=("simple",), timeout=0.2)
    assert [m.name for m in status.models] == ["simple"]


async def test_renderings_fit_in_80_columns(store: KVStore) -> None:
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(4)
    try:
        await register(store, "a" * 16, f"http://127.0.0.1:{frozen.getsockname()[1]}")
        await register(store, "b" * 16, "")
        card = frontend_card("f1" * 8, unresponsive=[], updated=time.time())
        await store.put(frontend_card_key(NS, card.frontend_id), card.to_json())
        status = await collect(store, NS, timeout=0.3)
    finally:
        frozen.close()
    history = RateHistory()
    history.update(status, 1.0)
    for renderable in (render_status(status), render_top(status, history, "", "_.-=+*#@")):
        console = Console(width=80, record=True, color_system=None, file=io.StringIO())
        console.print(renderable)
        text = console.export_text()
        assert "unresponsive" in text and "identity" in text and "aaaaaaaa" in text
        assert "…" not in text.split("\n", 2)[1]  # the header row is whole
        assert all(len(line) <= 80 for line in text.splitlines())


def frame(total: int, per_minute: float, uptime: float | None = None) -> ClusterStatus:
    """A look at one worker of model ``m`` whose counter reads ``total``."""
    load = {"requests_total": total, "requests_per_second": per_minute, "in_flight": 0}
    worker = WorkerEntry("a" * 16, "serving", "h", "", "tcp", 1, True, "", "", "1", None, SystemPort("", "ok"), load)
    worker.uptime_seconds = uptime
    return ClusterStatus(STATUS_SCHEMA, 0.0, "mem", [NS], 1.0, [ModelEntry("m", ["1"], [worker])], [], [])


def test_rate_history_uses_the_counter_increase_between_frames() -> None:
    history = RateHistory(width=4)
    first = frame(100, 5.0)
    history.update(first, 10.0)
    worker = first.models[0].workers[0]
    assert history.rate("m", worker) == 5.0  # the first frame: the window's rate
    history.update(frame(130, 5.0), 12.0)
    assert history.rate("m", worker) == 15.0
    assert history.trend("m", worker) == [5.0, 15.0]


def test_rate_history_divides_by_the_time_between_the_worker_s_own_readings() -> None:
    history = RateHistory()
    history.update(frame(100, 5.0, uptime=50.0), 10.0)
    history.update(frame(150, 5.0, uptime=50.5), 12.0)  # this look waited on a slow worker: 2 s between frames
    worker = frame(0, 0).models[0].workers[0]
    assert history.rate("m", worker) == 100.0
    history.update(frame(3, 1.0, uptime=0.5), 13.0)  # restarted behind the same id: its window's rate
    assert history.rate("m", worker) == 1.0


@pytest.mark.parametrize("parse", [WorkerCard.from_json, FrontendCard.from_json])
def test_cards_with_another_schema_are_refused_with_the_reason(parse: object) -> None:
    with pytest.raises(ConfigError, match="schema is 'x/v9'"):
        parse(json.dumps({"schema": "x/v9"}).encode())  # type: ignore[operator]


def test_cards_round_trip_and_hosts_are_dialable() -> None:
    card = frontend_card("f" * 16, unresponsive=["a"], updated=1.0)
    assert json.loads(card.to_json())["schema"] == FRONTEND_CARD_SCHEMA
    assert FrontendCard.from_json(card.to_json()) == card
    assert published_host("0.0.0.0", "10.0.0.7") == "10.0.0.7"
    assert published_host("::", "fe80::1") == "[fe80::1]"
    assert published_host("127.0.0.1", "x") == "127.0.0.1"


async def test_stats_endpoint_serves_the_window_as_json() -> None:
    metrics = WorkerMetrics()
    server = SystemServer("127.0.0.1", 0, health=healthy, registry=metrics.registry)
    await server.start()
    try:
        with metrics.track("identity"):
            pass
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
    finally:
        await server.stop()
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["schema"] == "dyntriton.worker-stats/v1"
    assert body["models"]["identity"]["requests_total"] == 1
    assert body["span_seconds"] == 60.0


class TinyBackend:
    """What Worker.start and stop use of a backend: one model, no inference."""

    async def start(self) -> None:
        pass

    async def stop(self, *, timeout: float = 30.0) -> None:
        pass

    async def repository_index(self) -> list[str]:
        return ["m"]

    async def load_model(self, name: str, **_: object) -> ModelInfo:
        config = model_config_pb2.ModelConfig(name=name, max_batch_size=4)
        return ModelInfo(name, "1", config, service_pb2.ModelMetadataResponse(name=name, versions=["1"]))

    def server_identity(self) -> tuple[str, str]:
        return "triton", "2.51.0"


async def test_a_worker_card_says_serving_then_draining_then_goes_with_the_lease(store: KVStore) -> None:
    worker = Worker(
        TinyBackend(),  # type: ignore[arg-type]
        store,
        make_plugin_manager().transport("inproc"),
        WorkerSettings(models=("m",), lease_ttl=5.0),
    )
    worker.system = ("0.0.0.0", 8081)
    events = []
    async with store.watch(workers_prefix(NS)) as watch:
        await worker.start()
        await worker.stop()
        async with asyncio.timeout(10):
            async for event in watch:
                events.append(event)
                if event.kind is EventKind.DELETE:
                    break
    cards = [WorkerCard.from_json(e.value) for e in events if e.value is not None]
    assert [card.state for card in cards] == ["serving", "draining"]
    assert cards[0].models == ["m"] and cards[0].instance_id == worker.instance_id
    assert cards[0].system_url == f"http://{socket.gethostname()}:8081"  # a wildcard bind: a dialable name
    assert cards[0].server_version == "2.51.0" and cards[0].pid == os.getpid()
    assert events[-1].kind is EventKind.DELETE  # the lease, revoked, took it away
    assert await store.list(models_prefix(NS)) == []


async def test_a_frontend_card_is_put_with_its_load_and_withdrawn_when_its_task_ends(store: KVStore) -> None:
    table = ModelTable(store, NS)
    await table.start()
    plugins = make_plugin_manager()
    service = RoutingService(table, plugins.router("round-robin"), plugins.transport)
    publisher = FrontendPublisher(store, NS, service, table, grpc="127.0.0.1:8787", http="", interval=0.2)
    service.metrics.requests.labels("identity", "grpc").inc()
    task = asyncio.create_task(publisher.run())
    try:
        async with asyncio.timeout(10):
            while (entry := await store.get(publisher.key)) is None:
                await asyncio.sleep(0.05)
        card = FrontendCard.from_json(entry.value)
        assert card.grpc == "127.0.0.1:8787" and card.http == "" and card.pid == os.getpid()
        assert card.models["identity"]["requests_total"] == 1 and card.unresponsive == []
        assert entry.lease is not None  # gone with the process
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await service.close()
        await table.stop()
    assert await store.get(publisher.key) is None


async def test_every_namespace_unless_one_is_named(store: KVStore) -> None:
    await register(store, "a" * 16, "", ns="dynamo")
    await register(store, "b" * 16, "", ns="dynamo-serve-1-abcdef")  # a serve given no namespace
    card = frontend_card("f1" * 8, unresponsive=[], updated=time.time())
    await store.put(frontend_card_key("dynamo-serve-1-abcdef", card.frontend_id), card.to_json())
    everything = await collect(store, timeout=0.2)
    assert everything.namespaces == ["dynamo", "dynamo-serve-1-abcdef"]
    assert [(m.namespace, m.name, [w.instance_id[0] for w in m.workers]) for m in everything.models] == [
        ("dynamo", "identity", ["a"]),
        ("dynamo-serve-1-abcdef", "identity", ["b"]),
    ]
    assert [f.namespace for f in everything.frontends] == ["dynamo-serve-1-abcdef"]
    one = await collect(store, "dynamo", timeout=0.2)
    assert one.namespaces == ["dynamo"] and [m.workers[0].instance_id[0] for m in one.models] == ["a"]
    assert one.frontends == []
    console = Console(width=80, record=True, color_system=None, file=io.StringIO())
    console.print(render_status(everything))
    text = console.export_text()
    assert "namespace dynamo\n" in text and "namespace dynamo-serve-1-abcdef\n" in text
