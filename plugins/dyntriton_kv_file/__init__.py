"""The ``file`` KV store plugin (the default): a folder shared by every process on one host."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_kv_file.options import FileSettings

if TYPE_CHECKING:
    from dynamo_triton.registry import KVStoreRegister


def _factory(settings: FileSettings) -> Any:
    from dyntriton_kv_file.store import FileStore, default_root

    return FileStore(settings.root or default_root(), watch=settings.watch)


@hookimpl
def dyntriton_register_kv_stores(register: KVStoreRegister) -> None:
    register(
        "file",
        _factory,
        settings=FileSettings,
        traits=("default",),
        summary="a folder on this host (--file-kv-root); atomic writes, leases, inotify watch",
    )
