"""The router interface: pick one live instance of a model for a request.

Routers are plugins (``dyntriton_register_routers``), chosen with ``--router NAME``; the
shipped ones (round-robin, random, least-outstanding) live in the ``dyntriton_router_basic``
plugin. The core keeps the protocol and the routing table's types (:class:`Instance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from dynamo_triton.runtime.discovery import Instance

__all__ = ["Instance", "Policy", "Router", "RouterFactory"]


class Router(Protocol):
    """Chooses among candidates: never empty, all live instances of one model.

    ``pick`` runs on the event loop for every request: it must not block. ``Instance.outstanding``
    is the number of this frontend's requests in flight on that instance.
    """

    def pick(self, model: str, candidates: Sequence[Instance]) -> Instance: ...


#: The former name of :class:`Router`.
Policy = Router


class RouterFactory(Protocol):
    """What a router plugin registers: ``factory(settings) -> Router``; ``settings`` is an instance of the
    settings class registered with it, or None without one. One router serves one frontend process."""

    def __call__(self, settings: Any, /) -> Router: ...
