"""Router policies over live instances, and the routing service around frozen (unresponsive) workers."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.errors import DeadlineExceededError, NoInstanceError, UnknownNameError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.cards import ModelCard, card_key
from dynamo_triton.runtime.discovery import Instance, ModelTable
from dynamo_triton.runtime.sequences import SequenceStep
from dynamo_triton.runtime.service import RoutingService
from dynamo_triton.testing.wait import until
from dynamo_triton.transport import TransportRequest, TransportSettings

SHIPPED_ROUTERS = ("least-outstanding", "random", "round-robin")


def make_policy(name: str) -> Any:
    """A fresh router of the shipped plugin, by name, as ``--router NAME`` builds it."""
    return make_plugin_manager().router(name)


def test_the_shipped_routers_are_registered_by_their_plugin() -> None:
    plugins = make_plugin_manager()
    assert tuple(plugins.names("router")) == SHIPPED_ROUTERS
    assert {plugins.get("router", name).provider for name in SHIPPED_ROUTERS} == {"router-basic"}


def instance(instance_id: str, outstanding: int = 0) -> Instance:
    card = ModelCard("m", "1", instance_id, f"tcp://h:{len(instance_id)}", "tcp", False, {}, {})
    return Instance(card, model_config_pb2.ModelConfig(), service_pb2.ModelMetadataResponse(), outstanding)


def test_round_robin_visits_every_instance_in_turn() -> None:
    policy = make_policy("round-robin")
    candidates = [instance("a"), instance("b"), instance("c")]
    picks = [policy.pick("m", candidates).instance_id for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_random_reaches_every_instance() -> None:
    policy = make_policy("random")
    candidates = [instance("a"), instance("b")]
    counts = Counter(policy.pick("m", candidates).instance_id for _ in range(200))
    assert set(counts) == {"a", "b"}


def test_least_outstanding_prefers_the_idle_instance() -> None:
    policy = make_policy("least-outstanding")
    busy, idle = instance("a", outstanding=5), instance("b", outstanding=1)
    assert {policy.pick("m", [busy, idle]).instance_id for _ in range(5)} == {"b"}


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="least-outstanding, random, round-robin"):
        make_policy("fastest")


# -- liveness: frozen workers (real tcp servers, heartbeats of HEARTBEAT s) ------------------------
HEARTBEAT = 0.3
WAIT = 10.0
SEQUENCE_CONFIG = {"name": "m", "max_batch_size": 8, "sequence_batching": {"max_sequence_idle_microseconds": 10**7}}


class Workers:
    """tcp servers answering with their instance id, registered in a mem store; frontends over it."""

    def __init__(self) -> None:
        self.plugins = make_plugin_manager()
        self.space = f"routing-{next(_spaces)}"
        self.store = self.plugins.kv_store("mem", space=self.space)
        self.transport = self.plugins.transport("tcp", TransportSettings(heartbeat=HEARTBEAT))
        self.servers: dict[str, Any] = {}
        self.calls: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.blocked: list[str] = []
        self.frontends: list[tuple[ModelTable, RoutingService]] = []

    async def add(self, instance_id: str, config: dict | None = None, *, decoupled: bool = False) -> str:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            self.calls[instance_id] += 1
            if bytes(request.payload) == b"block":
                self.blocked.append(instance_id)
                await self.release.wait()
            yield instance_id.encode()
            if bytes(request.payload) == b"answer-then-hang":
                self.blocked.append(instance_id)
                await asyncio.Event().wait()  # the end of the stream never comes: the test kills the worker

        server = self.transport.server()
        address = await server.start(handler)
        self.servers[instance_id] = server
        card = ModelCard("m", "1", instance_id, address, "tcp", decoupled, config or {"name": "m"}, {"name": "m"})
        await self.store.put(card_key("dynamo", "m", instance_id), card.to_json())
        return address

    def kill(self, instance_id: str) -> None:
        """Drop the worker's connections as a crash would (no GONE, no END)."""
        for connection in self.servers[instance_id].connections:
            connection.writer.transport.abort()

    def freeze(self, instance_id: str) -> None:
        """Like SIGSTOP: nothing is read, not even on new connections (the client's probes)."""
        self.servers[instance_id].freeze()

    def thaw(self, instance_id: str) -> None:
        self.servers[instance_id].thaw()

    async def frontend(self, policy: str = "round-robin") -> RoutingService:
        table = ModelTable(self.plugins.kv_store("mem", space=self.space), "dynamo")
        await table.start()
        service = RoutingService(table, make_policy(policy), lambda name: self.transport)
        self.frontends.append((table, service))
        await until(lambda: len(table.instances("m")) == len(self.servers), WAIT, "the frontend to see every worker")
        return service

    async def close(self) -> None:
        self.release.set()
        for table, service in self.frontends:
            await table.stop()
            await service.close()
        for server in self.servers.values():
            await server.stop(grace=0)


_spaces = itertools.count()


_UNARY = False  # set by the ``path`` fixture: every test runs on both request paths


@pytest.fixture(autouse=True, params=["stream", "unary"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """``stream``: RoutingService.infer; ``unary``: RoutingService.infer_unary (the fast path the request
    pipeline takes for a non-decoupled model outside a sequence), with the same rules."""
    global _UNARY
    _UNARY = request.param == "unary"
    yield request.param
    _UNARY = False


async def answer(service: RoutingService, payload: bytes = b"x", *, stream: bool = False, **kwargs: Any) -> str:
    if _UNARY and not stream and kwargs.get("sequence") is None:
        kwargs.pop("sequence", None)
        return bytes(await service.infer_unary("m", payload, **kwargs) or b"").decode()
    chunks = [bytes(chunk) async for chunk in service.infer("m", payload, **kwargs)]
    return b"".join(chunks).decode()


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    w = Workers()
    try:
        yield w
    finally:
        await w.close()


@pytest.mark.parametrize("policy", SHIPPED_ROUTERS)
async def test_every_policy_routes_around_a_frozen_worker_and_back(workers: Workers, policy: str) -> None:
    await workers.add("a")
    await workers.add("b")
    service = await workers.frontend(policy)
    assert {await answer(service) for _ in range(40)} == {"a", "b"}, "both connected and answering"
    workers.freeze("b")
    began = time.monotonic()
    # Requests sent to b before it is found unresponsive were never read there: they go to a.
    answers = [await answer(service, timeout=5.0) for _ in range(20)]
    assert set(answers) == {"a"} and time.monotonic() - began < 3 * HEARTBEAT + 1.0
    b = service._table.instance("m", "b")
    assert b is not None and service.unresponsive(b), "b stays in the table, passed over"
    workers.thaw("b")
    await until(lambda: not service.unresponsive(b), WAIT, "b to answer again")
    seen: set[str] = set()
    for _ in range(100):
        seen.add(await answer(service))
        if seen == {"a", "b"}:
            break
    assert seen == {"a", "b"}, f"{policy}: b should get traffic again"


async def test_a_request_the_frozen_worker_read_ends_at_its_deadline(workers: Workers) -> None:
    await workers.add("a")
    service = await workers.frontend()
    task = asyncio.create_task(answer(service, b"block", timeout=1.0))
    await until(lambda: workers.blocked == ["a"], WAIT, "the request to reach the worker")
    began = time.monotonic()
    workers.freeze("a")
    with pytest.raises(DeadlineExceededError) as caught:
        await asyncio.wait_for(task, WAIT)
    assert 0.5 < time.monotonic() - began < 1.5, "it ends at its deadline, not before or after"
    message = caught.value.message
    assert "model 'm'" in message and "stopped responding" in message and "tcp://" not in message, message


async def test_without_a_deadline_a_read_request_ends_at_detection_and_is_not_retried(workers: Workers) -> None:
    await workers.add("a")
    await workers.add("b")
    service = await workers.frontend()
    assert {await answer(service) for _ in range(4)} == {"a", "b"}
    task = asyncio.create_task(answer(service, b"block"))
    await until(lambda: len(workers.blocked) == 1, WAIT, "the request to reach a worker")
    frozen, other = workers.blocked[0], ({"a", "b"} - {workers.blocked[0]}).pop()
    before = workers.calls[other]
    began = time.monotonic()
    workers.freeze(frozen)
    with pytest.raises(NoInstanceError) as caught:
        await asyncio.wait_for(task, WAIT)
    assert time.monotonic() - began < 2 * HEARTBEAT + 0.5
    assert caught.value.status == "UNAVAILABLE" and workers.calls[other] == before, "a read request is not re-sent"
    message = caught.value.message
    assert "model 'm'" in message and "stopped responding" in message and "tcp://" not in message, message


async def test_when_every_worker_is_frozen_requests_fail_at_once(workers: Workers) -> None:
    await workers.add("a")
    service = await workers.frontend()
    assert await answer(service) == "a"
    workers.freeze("a")
    a = service._table.instance("m", "a")
    await until(lambda: a is not None and service.unresponsive(a), WAIT, "a to be unresponsive")
    began = time.monotonic()
    with pytest.raises(NoInstanceError) as caught:
        await answer(service, timeout=30.0)
    assert time.monotonic() - began < 0.2
    assert "no instance of model 'm' is responding" in caught.value.message


async def test_a_sequence_pinned_to_a_frozen_worker_fails_fast_and_resumes_there(workers: Workers) -> None:
    await workers.add("a", SEQUENCE_CONFIG)
    await workers.add("b", SEQUENCE_CONFIG)
    service = await workers.frontend()
    holder = await answer(service, sequence=SequenceStep(7, True, False))
    assert await answer(service, sequence=SequenceStep(7, False, False)) == holder
    workers.freeze(holder)
    instance = service._table.instance("m", holder)
    await until(lambda: instance is not None and service.unresponsive(instance), WAIT, "the holder to be unresponsive")
    began = time.monotonic()
    with pytest.raises(NoInstanceError) as caught:
        await answer(service, timeout=30.0, sequence=SequenceStep(7, False, False))
    assert time.monotonic() - began < 0.2 and "sequence 7 of model 'm' is not responding" in caught.value.message
    other = ({"a", "b"} - {holder}).pop()
    assert await answer(service, sequence=SequenceStep(8, True, False)) == other, "a new sequence starts elsewhere"
    workers.thaw(holder)
    await until(lambda: not service.unresponsive(instance), WAIT, "the holder to answer again")
    assert await answer(service, sequence=SequenceStep(7, False, True)) == holder, "the sequence goes on where it was"


async def test_error_texts_name_the_model_and_never_an_address(workers: Workers) -> None:
    await workers.add("a")
    await workers.add("b")
    service = await workers.frontend()
    service.model("m")  # as the request pipeline does before routing
    assert {await answer(service) for _ in range(4)} == {"a", "b"}
    for server in workers.servers.values():
        server.abort()  # both crash
    with pytest.raises(NoInstanceError) as caught:
        await answer(service)
    message = caught.value.message
    assert "model 'm'" in message and "tcp://" not in message and "127.0.0.1" not in message, message


@pytest.mark.parametrize("decoupled", [False, True])
async def test_a_worker_lost_after_its_answer(workers: Workers, decoupled: bool) -> None:
    """A non-decoupled model answers once: that answer stands when the worker dies before the end of
    its stream. A decoupled one may have had more to say: UNAVAILABLE, and no second worker runs it."""
    await workers.add("a", decoupled=decoupled)
    service = await workers.frontend()
    task = asyncio.create_task(answer(service, b"answer-then-hang", stream=decoupled))
    await until(lambda: workers.blocked == ["a"], WAIT, "the answer to be sent")
    workers.kill("a")
    if decoupled:
        with pytest.raises(NoInstanceError, match="failed after answering part of the request"):
            await asyncio.wait_for(task, WAIT)
    else:
        assert await asyncio.wait_for(task, WAIT) == "a"
    assert workers.calls["a"] == 1
