"""The ``mem`` KV store plugin: everything in one process (``serve --store-kv mem``, tests)."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any) -> Any:
    from dyntriton_kv_mem.store import MemStore

    return MemStore(space=str(settings.options.get("space", "default")))


@hookimpl
def dyntriton_register_kv_stores(register: Register) -> None:
    register("mem", _factory, summary="in-process store; frontend and workers in one process")
