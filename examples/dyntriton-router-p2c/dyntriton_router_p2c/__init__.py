"""The ``p2c`` router plugin: power of two choices on requests in flight."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynamo_triton import hookimpl
from dynamo_triton.settings import setting

if TYPE_CHECKING:
    from dynamo_triton.registry import RouterRegister
    from dynamo_triton.runtime.routing import Instance, Router


@dataclass(frozen=True)
class P2CSettings:
    """:param seed: seed of the random draws (None: a fresh one per process)."""

    __panel__ = "p2c router"

    seed: int | None = setting(
        None, "--p2c-seed", envvar="DYN_P2C_SEED", type=int, help="Seed of p2c's random draws (reproducible tests)."
    )


class PowerOfTwoChoices:
    """Two instances drawn at random; the one with fewer requests in flight wins (the first drawn on a tie)."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def pick(self, model: str, candidates: Sequence[Instance]) -> Instance:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._random.sample(range(len(candidates)), 2)
        a, b = candidates[first], candidates[second]
        return b if b.outstanding < a.outstanding else a


def _factory(settings: P2CSettings) -> Router:
    return PowerOfTwoChoices(settings.seed)


@hookimpl
def dyntriton_register_routers(register: RouterRegister) -> None:
    register("p2c", _factory, settings=P2CSettings, summary="power of two choices on requests in flight")
