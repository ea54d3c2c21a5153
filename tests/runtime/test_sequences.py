"""Sticky sequences: pins, rendezvous agreement across frontends, joins, expiry, lost workers, bounds.

Real pieces where they are cheap: the ``mem`` store, the discovery table, the ``inproc``
transport and the RoutingService. The workers are small fakes of Triton's sequence
batcher: they keep a running sum per sequence id and refuse a non-START request for a
sequence they do not hold with Triton's own error, exactly as Triton does.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.errors import DyntritonError, InvalidRequestError, NoInstanceError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.cards import ModelCard, card_key
from dynamo_triton.runtime.discovery import Instance, ModelTable
from dynamo_triton.runtime.sequences import (
    DEFAULT_IDLE_SECONDS,
    PinTable,
    SequenceStep,
    hrw_order,
    idle_seconds,
    is_unknown_sequence,
    sequence_step,
)
from dynamo_triton.runtime.service import RoutingService
from dynamo_triton.testing.wait import until
from dynamo_triton.transport import TransportRequest

MODEL = "acc"
IDLE_US = 2_000_000
WAIT = 10.0
_spaces = itertools.count()


# -- a fake worker: Triton's sequence batcher in miniature ---------------------------------------
@dataclass
class FakeWorker:
    """Holds a running sum per sequence; rejects unknown non-START requests like Triton."""

    instance_id: str
    sums: dict[int | str, int] = field(default_factory=dict)
    calls: int = 0
    hold: asyncio.Event | None = None  # when set, requests wait for it (to kill a worker mid-request)
    hold_start: asyncio.Event | None = None  # when set, START requests wait for it before taking effect
    server: object = None
    address: str = ""

    async def handle(self, request: TransportRequest) -> AsyncIterator[bytes]:
        self.calls += 1
        message = service_pb2.ModelInferRequest.FromString(request.payload)
        step = sequence_step(message)
        value = message.parameters["value"].int64_param
        if step is not None and step.start and self.hold_start is not None:
            await self.hold_start.wait()
        if step is None:
            total = value
        else:
            if not step.start and step.sequence_id not in self.sums:
                raise InvalidRequestError(
                    f"inference request for sequence {step.sequence_id} to model '{message.model_name}' "
                    "must specify the START flag on the first request of the sequence"
                )
            if self.hold is not None:
                await self.hold.wait()
            total = (0 if step.start else self.sums[step.sequence_id]) + value
            if step.end:
                self.sums.pop(step.sequence_id, None)
            else:
                self.sums[step.sequence_id] = total
        response = service_pb2.ModelInferResponse(model_name=message.model_name, id=self.instance_id)
        response.parameters["sum"].int64_param = total
        yield response.SerializeToString()


def request(sequence_id: int | str, value: int, *, start: bool = False, end: bool = False) -> bytes:
    message = service_pb2.ModelInferRequest(model_name=MODEL)
    message.parameters["value"].int64_param = value
    if isinstance(sequence_id, int):
        message.parameters["sequence_id"].int64_param = sequence_id
    else:
        message.parameters["sequence_id"].string_param = sequence_id
    if start:
        message.parameters["sequence_start"].bool_param = True
    if end:
        message.parameters["sequence_end"].bool_param = True
    return message.SerializeToString()


def card(worker: FakeWorker, *, sequence: bool = True) -> ModelCard:
    config: dict[str, object] = {"name": MODEL, "max_batch_size": 8}
    if sequence:
        config["sequence_batching"] = {"max_sequence_idle_microseconds": IDLE_US}
    return ModelCard(MODEL, "1", worker.instance_id, worker.address, "inproc", False, config, {"name": MODEL})


class Cluster:
    """Fake workers registering in one mem store; frontends (RoutingService) watching it."""

    def __init__(self) -> None:
        self.plugins = make_plugin_manager()
        self.space = f"sequences-{next(_spaces)}"
        self.store = self.plugins.kv_store("mem", space=self.space)
        self.transport = self.plugins.transport("inproc")
        self.workers: dict[str, FakeWorker] = {}
        self.frontends: list[tuple[ModelTable, RoutingService]] = []

    async def add_worker(self, instance_id: str, *, sequence: bool = True) -> FakeWorker:
        worker = FakeWorker(instance_id)
        worker.server = self.transport.server()
        worker.address = await worker.server.start(worker.handle)  # type: ignore[attr-defined]
        await self.store.put(card_key("dynamo", MODEL, instance_id), card(worker, sequence=sequence).to_json())
        self.workers[instance_id] = worker
        for table, _ in self.frontends:
            await until(lambda t=table: t.instance(MODEL, instance_id) is not None, WAIT, f"{instance_id} to be seen")
        return worker

    async def kill(self, instance_id: str, *, leave_store: bool = True) -> None:
        """The worker dies: its server vanishes; its card leaves the store (lease expiry) if asked."""
        worker = self.workers.pop(instance_id)
        await worker.server.stop(grace=0)  # type: ignore[attr-defined]
        if leave_store:
            await self.store.delete(card_key("dynamo", MODEL, instance_id))
            for table, _ in self.frontends:
                await until(lambda t=table: t.instance(MODEL, instance_id) is None, WAIT, f"{instance_id} to leave")

    async def frontend(self) -> RoutingService:
        table = ModelTable(self.plugins.kv_store("mem", space=self.space), "dynamo")
        await table.start()
        service = RoutingService(table, self.plugins.router("round-robin"), self.plugins.transport)
        self.frontends.append((table, service))
        await until(lambda: len(table.instances(MODEL)) == len(self.workers), WAIT, "the frontend to see every worker")
        return service

    async def close(self) -> None:
        for table, service in self.frontends:
            await table.stop()
            await service.close()
        for worker in self.workers.values():
            await worker.server.stop(grace=0)  # type: ignore[attr-defined]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


async def step(
    service: RoutingService, sequence_id: int | str, value: int, *, start: bool = False, end: bool = False
) -> tuple[int, str]:
    """One request of a sequence; returns (running sum, instance that answered)."""
    payload = request(sequence_id, value, start=start, end=end)
    chunks = [c async for c in service.infer(MODEL, payload, sequence=SequenceStep(sequence_id, start, end))]
    [raw] = chunks
    response = service_pb2.ModelInferResponse.FromString(raw)
    return response.parameters["sum"].int64_param, response.id


# -- the pieces ------------------------------------------------------------------------------------
def fake_instance(instance_id: str) -> Instance:
    config = model_config_pb2.ModelConfig(name=MODEL)
    return Instance(
        ModelCard(MODEL, "1", instance_id, f"tcp://h:{instance_id}", "tcp", False, {}, {}),
        config,
        service_pb2.ModelMetadataResponse(),
    )


def test_rendezvous_order_is_deterministic_and_independent_of_listing_order() -> None:
    instances = [fake_instance(f"w{i}") for i in range(5)]
    first = [inst.instance_id for inst in hrw_order(MODEL, 42, instances)]
    again = [inst.instance_id for inst in hrw_order(MODEL, 42, list(reversed(instances)))]
    assert first == again and sorted(first) == [f"w{i}" for i in range(5)]
    # Integer and string ids are different sequences; both spread over every instance.
    tops = {hrw_order(MODEL, n, instances)[0].instance_id for n in range(200)}
    assert tops == {f"w{i}" for i in range(5)}
    assert {hrw_order(MODEL, str(n), instances)[0].instance_id for n in range(200)} == tops


def test_a_join_moves_only_the_sequences_the_new_instance_wins() -> None:
    before = [fake_instance(f"w{i}") for i in range(3)]
    after = [*before, fake_instance("w3")]
    for n in range(300):
        old, new = hrw_order(MODEL, n, before)[0], hrw_order(MODEL, n, after)[0]
        assert new.instance_id in (old.instance_id, "w3")


def test_idle_limit_comes_from_the_config_with_tritons_default() -> None:
    assert idle_seconds(model_config_pb2.ModelConfig()) is None
    config = model_config_pb2.ModelConfig()
    config.sequence_batching.SetInParent()
    assert idle_seconds(config) == DEFAULT_IDLE_SECONDS == 1.0
    config.sequence_batching.max_sequence_idle_microseconds = 2_500_000
    assert idle_seconds(config) == 2.5


def test_tritons_unknown_sequence_error_is_recognised_and_nothing_else() -> None:
    triton = InvalidRequestError(
        "inference request for sequence 7 to model 'm' must specify the START flag on the first request of the sequence"
    )
    assert is_unknown_sequence(triton)
    assert not is_unknown_sequence(InvalidRequestError("unexpected shape for input 'INPUT'"))
    assert not is_unknown_sequence(NoInstanceError("must specify the START flag on the first request of the sequence"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pins_expire_after_the_idle_limit_and_end_with_drop() -> None:
    clock = FakeClock()
    pins = PinTable(clock=clock)
    a = fake_instance("a")
    pins.pin(MODEL, 1, a, idle=2.0)
    clock.now += 1.9
    pin = pins.get(MODEL, 1)
    assert pin is not None and pin.instance_id == "a"
    pins.touch(MODEL, 1, pin, idle=2.0)
    clock.now += 1.9
    assert pins.get(MODEL, 1) is not None, "a touch extends the pin"
    clock.now += 2.1
    assert pins.get(MODEL, 1) is None and len(pins) == 0
    pins.pin(MODEL, 2, a, idle=2.0)
    pins.drop(MODEL, 2)
    assert pins.get(MODEL, 2) is None


def test_pin_table_memory_is_bounded() -> None:
    clock = FakeClock()
    pins = PinTable(capacity=100, clock=clock)
    a = fake_instance("a")
    for n in range(1000):
        pins.pin(MODEL, n, a, idle=60.0)
    assert len(pins) == 100
    assert pins.get(MODEL, 999) is not None and pins.get(MODEL, 0) is None, "the least recently used go first"
    # Expired pins leave as new ones arrive, even below the bound.
    clock.now += 61
    pins.pin(MODEL, "fresh", a, idle=60.0)
    assert len(pins) == 1
    with pytest.raises(ValueError, match="at least 1"):
        PinTable(capacity=0)


# -- through the routing service ------------------------------------------------------------------
async def test_every_step_of_interleaved_sequences_reaches_the_instance_that_saw_its_start(cluster: Cluster) -> None:
    for name in ("w1", "w2", "w3"):
        await cluster.add_worker(name)
    service = await cluster.frontend()
    ids: list[int | str] = [*range(1, 9), "alpha", "beta"]
    expected = dict.fromkeys(ids, 0)
    owner: dict[int | str, str] = {}
    for round_ in range(6):
        results = await asyncio.gather(
            *(step(service, sid, round_ + 1, start=round_ == 0, end=round_ == 5) for sid in ids)
        )
        for sid, (total, instance_id) in zip(ids, results, strict=True):
            expected[sid] += round_ + 1
            assert total == expected[sid], f"sequence {sid!r} round {round_}"
            assert owner.setdefault(sid, instance_id) == instance_id
    assert len(set(owner.values())) > 1, "sequences spread over the instances"
    assert len(service.sequences.pins) == 0, "END releases every pin"
    assert all(not worker.sums for worker in cluster.workers.values())


async def test_two_frontends_agree_without_talking(cluster: Cluster) -> None:
    for name in ("w1", "w2", "w3"):
        await cluster.add_worker(name)
    a, b = await cluster.frontend(), await cluster.frontend()
    for sid in range(1, 21):
        _, started_on = await step(a, sid, 5, start=True)
        total, continued_on = await step(b, sid, 7)  # b never saw the START
        assert (total, continued_on) == (12, started_on)
    calls = sum(w.calls for w in cluster.workers.values())
    assert calls == 40, "b found every sequence at its first try: the frontends rank instances alike"


async def test_a_join_moves_no_running_sequence(cluster: Cluster) -> None:
    await cluster.add_worker("w1")
    await cluster.add_worker("w2")
    service = await cluster.frontend()
    owners = {sid: (await step(service, sid, 1, start=True))[1] for sid in range(1, 31)}
    await cluster.add_worker("w3")
    for sid, owner in owners.items():
        assert await step(service, sid, 2) == (3, owner)
    # New sequences do use the new instance.
    fresh = {(await step(service, sid, 1, start=True))[1] for sid in range(100, 130)}
    assert "w3" in fresh


async def test_a_frontend_without_the_pin_finds_a_sequence_after_a_join(cluster: Cluster) -> None:
    """A frontend that missed the START, after a join, looks in rendezvous order past Triton's refusals."""
    await cluster.add_worker("w1")
    a = await cluster.frontend()
    for sid in range(1, 21):
        await step(a, sid, 4, start=True)
    await cluster.add_worker("w2")
    b = await cluster.frontend()
    for sid in range(1, 21):
        assert await step(b, sid, 1) == (5, "w1")
        assert await step(b, sid, 1) == (6, "w1"), "b pinned it after finding it"
    assert cluster.workers["w1"].calls + cluster.workers["w2"].calls <= 20 + 40 + 20


async def test_steps_sent_together_reach_the_worker_in_order(cluster: Cluster) -> None:
    """A stream sends a sequence's steps without waiting; none may overtake its START on the way."""
    await cluster.add_worker("w1")
    service = await cluster.frontend()
    worker = cluster.workers["w1"]
    worker.hold_start = asyncio.Event()
    steps = [
        asyncio.ensure_future(step(service, 12, value, start=value == 1, end=value == 4)) for value in (1, 2, 3, 4)
    ]
    await until(lambda: worker.calls >= 1, WAIT, "START to reach the worker")
    worker.hold_start.set()
    assert [total for total, _ in await asyncio.gather(*steps)] == [1, 3, 6, 10]
    assert worker.calls == 4 and not worker.sums


async def test_a_sequence_whose_worker_left_fails_unavailable_and_is_never_rerouted(cluster: Cluster) -> None:
    await cluster.add_worker("w1")
    await cluster.add_worker("w2")
    service = await cluster.frontend()
    _, owner = await step(service, 77, 1, start=True)
    other = "w2" if owner == "w1" else "w1"
    calls_before = cluster.workers[other].calls
    await cluster.kill(owner)
    for _ in range(2):
        with pytest.raises(NoInstanceError) as info:
            await step(service, 77, 1)
        assert info.value.status == "UNAVAILABLE"
        message = str(info.value)
        assert "77" in message and f"'{MODEL}'" in message and "lost with its worker" in message
        assert "sequence_start" in message
    assert cluster.workers[other].calls == calls_before, "no step went to a worker without the state"
    # Restarting with START works, on the surviving worker.
    assert await step(service, 77, 10, start=True) == (10, other)
    assert await step(service, 77, 1, end=True) == (11, other)


async def test_a_worker_killed_mid_step_loses_the_sequence(cluster: Cluster) -> None:
    await cluster.add_worker("w1")
    await cluster.add_worker("w2")
    service = await cluster.frontend()
    _, owner = await step(service, "s", 1, start=True)
    worker = cluster.workers[owner]
    worker.hold = asyncio.Event()
    pending = asyncio.ensure_future(step(service, "s", 1))
    await until(lambda: worker.calls == 2, WAIT, "the step to reach the worker")
    await cluster.kill(owner, leave_store=False)  # the card is still in the store (lease not expired yet)
    with pytest.raises(NoInstanceError, match="lost with its worker"):
        await pending
    with pytest.raises(NoInstanceError, match="lost with its worker"):
        await step(service, "s", 1)
    # END of a lost sequence fails too, and clears it.
    with pytest.raises(NoInstanceError, match="lost with its worker"):
        await step(service, "s", 1, end=True)
    assert service.sequences.pins.get(MODEL, "s") is None


async def test_an_unknown_sequence_gets_tritons_error(cluster: Cluster) -> None:
    await cluster.add_worker("w1")
    await cluster.add_worker("w2")
    service = await cluster.frontend()
    with pytest.raises(DyntritonError) as info:
        await step(service, 5, 1)
    assert info.value.status == "INVALID_ARGUMENT" and "must specify the START flag" in str(info.value)


async def test_idle_expiry_releases_the_pin(cluster: Cluster) -> None:
    await cluster.add_worker("w1")
    await cluster.add_worker("w2")
    service = await cluster.frontend()
    clock = FakeClock()
    service.sequences.pins = PinTable(clock=clock)
    _, owner = await step(service, 9, 1, start=True)
    clock.now += IDLE_US / 1e6 - 0.1
    assert service.sequences.pins.get(MODEL, 9) is not None
    assert await step(service, 9, 1) == (2, owner)
    clock.now += IDLE_US / 1e6 + 0.1
    assert service.sequences.pins.get(MODEL, 9) is None, "idle past the model's limit: the pin is gone"


async def test_requests_without_a_sequence_and_models_without_sequence_batching_use_the_policy(
    cluster: Cluster,
) -> None:
    await cluster.add_worker("w1", sequence=False)
    await cluster.add_worker("w2", sequence=False)
    service = await cluster.frontend()
    seen = set()
    for _ in range(4):
        payload = request(3, 1, start=True)
        [raw] = [c async for c in service.infer(MODEL, payload, sequence=SequenceStep(3, start=True))]
        seen.add(service_pb2.ModelInferResponse.FromString(raw).id)
    assert seen == {"w1", "w2"}, "round-robin as before: the model has no sequence_batching"
    assert len(service.sequences.pins) == 0
