"""Admission control: slots per instance, the deadline-ordered queue, shedding at once, expiry and cancel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from tritonclient.grpc import model_config_pb2

from dynamo_triton.errors import DeadlineExceededError, OverloadedError
from dynamo_triton.runtime.admission import UNBOUNDED_SLOTS, Admission, AdmissionSettings, queue_policy, slot_limit


@dataclass(eq=False)
class Slotted:
    """What admission reads of an instance: its requests in flight and its model's config."""

    name: str
    outstanding: int = 0
    config: model_config_pb2.ModelConfig = field(default_factory=model_config_pb2.ModelConfig)


class First:
    def pick(self, model: str, candidates: Sequence[Slotted]) -> Slotted:
        return candidates[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(max_inflight: int = 1, **settings: float) -> tuple[Admission, Clock]:
    clock = Clock()
    return Admission(AdmissionSettings(max_inflight=max_inflight, **settings), clock=clock), clock  # type: ignore[arg-type]


async def waiting(admission: Admission, model: str, count: int) -> None:
    for _ in range(100):
        if admission.waiting(model) == count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{admission.waiting(model)} waiters, expected {count}")


def test_slot_limit_counts_executions_and_one_waiting_each() -> None:
    config = model_config_pb2.ModelConfig(max_batch_size=8)
    config.instance_group.add(count=2)
    assert slot_limit(config) == 4  # no dynamic batching: 2 executions + 2 waiting
    config.dynamic_batching.SetInParent()
    assert slot_limit(config) == 2 * 8 + 2
    config.dynamic_batching.default_queue_policy.max_queue_size = 5
    assert slot_limit(config) == 5  # Triton's own queue must hold all that is sent at once


def test_decoupled_models_and_ensembles_are_not_bounded_by_their_config() -> None:
    decoupled = model_config_pb2.ModelConfig()
    decoupled.instance_group.add(count=1)
    decoupled.model_transaction_policy.decoupled = True
    ensemble = model_config_pb2.ModelConfig(platform="ensemble")
    assert slot_limit(decoupled) == slot_limit(ensemble) == UNBOUNDED_SLOTS


def test_queue_policy_reads_tritons_default_queue_policy() -> None:
    config = model_config_pb2.ModelConfig()
    assert queue_policy(config) == (0, None, 0, True)
    config.dynamic_batching.default_queue_policy.max_queue_size = 3
    config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 250_000
    config.dynamic_batching.default_priority_level = 2
    assert queue_policy(config) == (3, 0.25, 2, False)
    config.dynamic_batching.default_queue_policy.allow_timeout_override = True
    assert queue_policy(config)[3] is True


async def test_a_free_slot_is_taken_at_once_and_counted() -> None:
    admission, _ = make(max_inflight=2)
    a = Slotted("a")
    assert await admission.admit("m", [a], First()) is a
    assert await admission.admit("m", [a], First()) is a
    assert a.outstanding == 2


async def test_waiters_get_freed_slots_earliest_deadline_first() -> None:
    admission, clock = make()
    a = Slotted("a")
    await admission.admit("m", [a], First())
    late = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 50))
    soon = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 10))
    await waiting(admission, "m", 2)
    admission.release("m", a, [a], First(), 0.01)
    assert await soon is a
    assert not late.done()
    admission.release("m", a, [a], First(), 0.01)
    assert await late is a
    assert a.outstanding == 1 and admission.waiting("m") == 0


async def test_priority_level_goes_before_deadline() -> None:
    admission, clock = make()
    a = Slotted("a")
    await admission.admit("m", [a], First())
    urgent_low = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 1, priority=2))
    relaxed_high = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 60, priority=1))
    await waiting(admission, "m", 2)
    admission.release("m", a, [a], First(), None)
    assert await relaxed_high is a
    assert not urgent_low.done()
    urgent_low.cancel()


async def test_a_waiter_whose_deadline_passes_is_answered_then_and_never_sent() -> None:
    admission = Admission(AdmissionSettings(max_inflight=1))  # the real clock: the deadline must fire
    a = Slotted("a")
    await admission.admit("m", [a], First())
    with pytest.raises(DeadlineExceededError, match="was not sent"):
        await admission.admit("m", [a], First(), deadline=time.monotonic() + 0.05)
    assert admission.waiting("m") == 0
    admission.release("m", a, [a], First(), None)
    assert a.outstanding == 0  # the slot was not handed to the expired waiter


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    admission, _ = make()
    a = Slotted("a")
    await admission.admit("m", [a], First())
    waiter = asyncio.ensure_future(admission.admit("m", [a], First()))
    await waiting(admission, "m", 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.waiting("m") == 0
    admission.release("m", a, [a], First(), None)
    assert a.outstanding == 0


async def test_a_full_queue_sheds_at_once() -> None:
    admission, _ = make(max_queue=1)
    a = Slotted("a")
    await admission.admit("m", [a], First())
    first = asyncio.ensure_future(admission.admit("m", [a], First()))
    await waiting(admission, "m", 1)
    with pytest.raises(OverloadedError, match="requests wait") as shed:
        await admission.admit("m", [a], First())
    assert shed.value.status == "RESOURCE_EXHAUSTED"
    first.cancel()


async def test_a_deadline_that_cannot_be_met_is_shed_at_once() -> None:
    admission, clock = make()
    a = Slotted("a")
    await admission.admit("m", [a], First())
    admission.release("m", a, [a], First(), 0.100)  # service time 100 ms measured
    await admission.admit("m", [a], First())
    queued = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 10))
    await waiting(admission, "m", 1)
    with pytest.raises(OverloadedError, match="before its turn") as shed:
        # two waits of 100 ms and its own 100 ms cannot end within 150 ms
        await admission.admit("m", [a], First(), deadline=clock.now + 0.150)
    assert shed.value.retry_after == pytest.approx(0.2)
    late_enough = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 0.35))
    await waiting(admission, "m", 2)
    queued.cancel()
    late_enough.cancel()


async def test_a_standing_queue_is_kept_to_one_service_time() -> None:
    admission, clock = make(overload_interval=0.1)
    a, b = Slotted("a"), Slotted("b")
    for inst in (a, b):
        await admission.admit("m", [inst], First())
        admission.release("m", inst, [a, b], First(), 0.020)
    await admission.admit("m", [a, b], First())
    await admission.admit("m", [b, a], First())
    deadline = clock.now + 10
    queued = [asyncio.ensure_future(admission.admit("m", [a, b], First(), deadline=deadline)) for _ in range(3)]
    await waiting(admission, "m", 3)  # a burst: three waits up to 30 ms, within the estimate
    clock.now += 0.2  # the queue has stood for 200 ms: overloaded
    with pytest.raises(OverloadedError, match="overloaded"):
        await admission.admit("m", [a, b], First(), deadline=deadline)
    patient = asyncio.ensure_future(admission.admit("m", [a, b], First()))  # no deadline: never shed on estimates
    await waiting(admission, "m", 4)
    for _ in range(4):  # the queue drains: the next request waits again
        admission.release("m", a, [a, b], First(), 0.020)
    await asyncio.gather(*queued, patient)
    admission.release("m", a, [a, b], First(), 0.020)
    assert (await admission.admit("m", [a, b], First(), deadline=clock.now + 10)) in (a, b)


async def test_disabled_admission_forwards_everything() -> None:
    admission = Admission(AdmissionSettings(max_inflight=1, enabled=False))
    a = Slotted("a")
    for _ in range(5):
        await admission.admit("m", [a], First())
    assert a.outstanding == 5


async def test_a_waiter_whose_turn_comes_too_late_to_finish_is_refused_not_run() -> None:
    admission, clock = make()
    a = Slotted("a")
    await admission.admit("m", [a], First())
    admission.release("m", a, [a], First(), 0.100)  # service time 100 ms measured
    await admission.admit("m", [a], First())
    waiter = asyncio.ensure_future(admission.admit("m", [a], First(), deadline=clock.now + 0.3))
    await waiting(admission, "m", 1)
    clock.now += 0.25  # its turn comes 50 ms before its deadline: too late for a 100 ms request
    admission.release("m", a, [a], First(), None)
    with pytest.raises(OverloadedError, match="before it could run"):
        await waiter
    assert a.outstanding == 0 and admission.waiting("m") == 0
