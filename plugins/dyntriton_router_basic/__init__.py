"""The shipped router policies: ``least-outstanding`` (the default), ``round-robin`` and ``random``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl

if TYPE_CHECKING:
    from dynamo_triton.registry import RouterRegister
    from dynamo_triton.runtime.routing import Router


def _round_robin(settings: Any) -> Router:
    from dyntriton_router_basic.policies import RoundRobin

    return RoundRobin()


def _random(settings: Any) -> Router:
    from dyntriton_router_basic.policies import Random

    return Random()


def _least_outstanding(settings: Any) -> Router:
    from dyntriton_router_basic.policies import LeastOutstanding

    return LeastOutstanding()


@hookimpl
def dyntriton_register_routers(register: RouterRegister) -> None:
    register("round-robin", _round_robin, summary="each model cycles through its instances in turn")
    register("random", _random, summary="a uniformly random instance")
    register(
        "least-outstanding",
        _least_outstanding,
        traits=("default",),
        summary="the instance with the fewest requests in flight, ties in turn (the default)",
    )
