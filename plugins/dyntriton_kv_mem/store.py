"""In-process KV store: one shared space per name, leases expired by a timer."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from dynamo_triton.errors import LeaseExpiredError
from dynamo_triton.kv import EventKind, KVEntry, WatchEvent
from dynamo_triton.watch import QueueWatch

__all__ = ["MemStore"]


@dataclass
class _Lease:
    ttl: float
    expires: float
    keys: set[str] = field(default_factory=set)


@dataclass
class _Space:
    """State shared by every MemStore of the same space in this process."""

    entries: dict[str, KVEntry] = field(default_factory=dict)
    leases: dict[int, _Lease] = field(default_factory=dict)
    watches: dict[QueueWatch, str] = field(default_factory=dict)
    revision: int = 0
    lease_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


_SPACES: dict[str, _Space] = {}


class MemStore:
    """KVStore over a process-wide space; stores with the same ``space`` see one another."""

    name = "mem"

    def __init__(self, space: str = "default"):
        self._space = _SPACES.setdefault(space, _Space())
        self._sweeper: asyncio.Task[None] | None = None

    # -- internals -------------------------------------------------------------------------------
    def _emit(self, kind: EventKind, key: str, value: bytes | None, revision: int) -> None:
        for watch, prefix in list(self._space.watches.items()):
            if key.startswith(prefix):
                watch.push(WatchEvent(kind, key, value, revision))

    def _expire(self) -> None:
        now = time.monotonic()
        for lease_id, lease in list(self._space.leases.items()):
            if lease.expires <= now:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._space.leases.pop(lease_id, None)
        if lease is None:
            return
        for key in sorted(lease.keys):
            entry = self._space.entries.get(key)
            if entry is not None and entry.lease == lease_id:
                self._delete_now(key)

    def _delete_now(self, key: str) -> bool:
        entry = self._space.entries.pop(key, None)
        if entry is None:
            return False
        if entry.lease is not None and entry.lease in self._space.leases:
            self._space.leases[entry.lease].keys.discard(key)
        self._space.revision += 1
        self._emit(EventKind.DELETE, key, None, self._space.revision)
        return True

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="dyntriton-mem-leases")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self._expire()

    # -- KVStore ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KVEntry | None:
        self._expire()
        return self._space.entries.get(key)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        self._expire()
        if lease is not None and lease not in self._space.leases:
            raise LeaseExpiredError(f"lease {lease:x} does not exist (expired or revoked)")
        previous = self._space.entries.get(key)
        if previous is not None and previous.lease is not None and previous.lease in self._space.leases:
            self._space.leases[previous.lease].keys.discard(key)
        self._space.revision += 1
        self._space.entries[key] = KVEntry(key, bytes(value), self._space.revision, lease)
        if lease is not None:
            self._space.leases[lease].keys.add(key)
        self._emit(EventKind.PUT, key, bytes(value), self._space.revision)
        return self._space.revision

    async def create(self, key: str, value: bytes, *, lease: int | None = None) -> bool:
        self._expire()
        if key in self._space.entries:
            return False
        await self.put(key, value, lease=lease)
        return True

    async def delete(self, key: str) -> bool:
        self._expire()
        return self._delete_now(key)

    async def list(self, prefix: str) -> list[KVEntry]:
        self._expire()
        return [entry for key, entry in sorted(self._space.entries.items()) if key.startswith(prefix)]

    def watch(self, prefix: str) -> QueueWatch:
        async def opener(watch: QueueWatch) -> None:
            self._expire()
            self._ensure_sweeper()
            # Snapshot and subscription happen with no await between them: nothing can slip through.
            watch.set_snapshot([e for k, e in self._space.entries.items() if k.startswith(prefix)])
            self._space.watches[watch] = prefix

        async def closer(watch: QueueWatch) -> None:
            self._space.watches.pop(watch, None)

        return QueueWatch(opener, closer)

    async def grant_lease(self, ttl: float) -> int:
        self._ensure_sweeper()
        lease_id = next(self._space.lease_ids)
        self._space.leases[lease_id] = _Lease(ttl, time.monotonic() + ttl)
        return lease_id

    async def keep_alive(self, lease: int) -> None:
        self._expire()
        entry = self._space.leases.get(lease)
        if entry is None:
            raise LeaseExpiredError(f"lease {lease:x} does not exist (expired or revoked)")
        entry.expires = time.monotonic() + entry.ttl

    async def revoke_lease(self, lease: int) -> None:
        self._drop_lease(lease)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
