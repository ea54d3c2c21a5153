"""Router policies: pick one live instance of a model for a request."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from dynamo_triton.errors import UnknownNameError
from dynamo_triton.runtime.discovery import Instance

__all__ = ["POLICIES", "Policy", "make_policy"]


class Policy(Protocol):
    """Chooses among candidates (never empty; all live instances of one model)."""

    def pick(self, model: str, candidates: Sequence[Instance]) -> Instance: ...


class RoundRobin:
    """Each model cycles through its instances in turn."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    def pick(self, model: str, candidates: Sequence[Instance]) -> Instance:
        counter = self._counters.setdefault(model, itertools.count())
        ordered = sorted(candidates, key=lambda inst: inst.instance_id)
        return ordered[next(counter) % len(ordered)]


class Random:
    """Uniformly random instance."""

    def __init__(self) -> None:
        self._random = random.Random()

    def pick(self, model: str, candidates: Sequence[Instance]) -> Instance:
        return self._random.choice(list(candidates))


class LeastOutstanding:
    """The instance with the fewest requests in flight; ties broken round-robin."""

    def __init__(self) -> None:
        self._tiebreak = RoundRobin()

    def pick(self, model: str, candidates: Sequence[Instance]) -> Instance:
        fewest = min(inst.outstanding for inst in candidates)
        return self._tiebreak.pick(model, [inst for inst in candidates if inst.outstanding == fewest])


POLICIES: dict[str, Callable[[], Policy]] = {
    "round-robin": RoundRobin,
    "random": Random,
    "least-outstanding": LeastOutstanding,
}


def make_policy(name: str) -> Policy:
    """A fresh policy by name; unknown names list the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise UnknownNameError("router policy", name, POLICIES) from None
