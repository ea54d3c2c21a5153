"""Round-robin, random and least-outstanding: the three routers dyntriton ships."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from dynamo_triton.runtime.routing import Instance

__all__ = ["LeastOutstanding", "Random", "RoundRobin"]


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
