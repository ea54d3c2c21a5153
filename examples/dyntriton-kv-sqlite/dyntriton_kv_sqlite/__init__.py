"""dyntriton plugin: the ``sqlite`` KV store (path from ``DYNTRITON_SQLITE_KV`` or the ``path`` option)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from dynamo_triton import hookimpl


def _factory(settings: Any) -> Any:
    from dyntriton_kv_sqlite.store import SqliteStore

    default = os.path.join(tempfile.gettempdir(), f"dyntriton-kv-{os.getuid()}.sqlite")
    return SqliteStore(settings.options.get("path") or os.environ.get("DYNTRITON_SQLITE_KV") or default)


@hookimpl
def dyntriton_register_kv_stores(register: Any) -> None:
    register("sqlite", _factory, summary="one SQLite file shared by the processes of a host (example plugin)")
