"""Router policies over live instances."""

from __future__ import annotations

from collections import Counter

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.errors import UnknownNameError
from dynamo_triton.runtime.cards import ModelCard
from dynamo_triton.runtime.discovery import Instance
from dynamo_triton.runtime.routing import make_policy


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
