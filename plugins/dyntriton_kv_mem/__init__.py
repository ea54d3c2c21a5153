"""The ``mem`` KV store plugin: everything in one process (``serve --store-kv mem``, tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl

if TYPE_CHECKING:
    from dynamo_triton.registry import KVStoreRegister


@dataclass(frozen=True)
class MemSettings:
    """:param space: stores made with the same space in one process share their data (tests use fresh ones)."""

    space: str = "default"


def _factory(settings: MemSettings) -> Any:
    from dyntriton_kv_mem.store import MemStore

    return MemStore(space=str(settings.space))


@hookimpl
def dyntriton_register_kv_stores(register: KVStoreRegister) -> None:
    register(
        "mem",
        _factory,
        settings=MemSettings,
        traits=("process-local",),
        summary="in-process store; frontend and workers in one process",
    )
