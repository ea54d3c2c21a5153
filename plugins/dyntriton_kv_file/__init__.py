"""The ``file`` KV store plugin (the default): a folder shared by every process on one host."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any) -> Any:
    from dyntriton_kv_file.store import FileStore, default_root, default_watch_mode

    options = settings.options
    return FileStore(options.get("root") or default_root(), watch=options.get("watch") or default_watch_mode())


@hookimpl
def dyntriton_register_kv_stores(register: Register) -> None:
    register("file", _factory, summary="a folder on this host (DYN_FILE_KV); atomic writes, leases, inotify watch")
