"""The key-value store interface that store plugins (file, mem, etcd, ...) implement.

Keys are ``str`` (``/``-separated paths), values are ``bytes``. Every store keeps
a monotonically increasing ``revision`` so a watcher can start from a snapshot
and miss nothing that happens after it.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "EventKind",
    "KVEntry",
    "KVStore",
    "KVStoreFactory",
    "StoreSettings",
    "Watch",
    "WatchEvent",
]


@dataclass(frozen=True)
class StoreSettings:
    """What a store factory registered *without* a settings class receives (the original form).

    A store registered with ``settings=Cls`` receives a ``Cls`` built from its CLI options instead
    (see :mod:`dynamo_triton.settings`).

    :param options: the keyword options of ``Plugins.kv_store(name, **options)``.
    """

    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KVEntry:
    """One key with its value.

    :param revision: the store revision at which this value was written.
    :param lease: the lease id the key is attached to, or None.
    """

    key: str
    value: bytes
    revision: int = 0
    lease: int | None = None


class EventKind(enum.Enum):
    """What happened to a key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched prefix; ``value`` is None for deletes."""

    kind: EventKind
    key: str
    value: bytes | None
    revision: int = 0


@runtime_checkable
class Watch(Protocol):
    """An open watch on a prefix: a snapshot, then every change after it.

    Use as ``async with store.watch(prefix) as w:``; ``w.snapshot`` holds the
    entries present when the watch opened, and ``async for event in w`` yields every
    put and delete after that snapshot, in order, none lost. Leaving the ``async with``
    block (or ``aclose()``) stops the watch.
    """

    snapshot: list[KVEntry]

    async def __aenter__(self) -> Watch: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class KVStore(Protocol):
    """An async key-value store with leases and prefix watches.

    All methods are coroutines except :meth:`watch`, which returns a :class:`Watch`
    to be entered with ``async with``. Stores raise
    :class:`~dynamo_triton.errors.StoreUnavailableError` (naming the endpoint) when
    the backing service cannot be reached within a bounded time, never hang.
    """

    name: str

    async def get(self, key: str) -> KVEntry | None:
        """The entry at ``key``, or None."""

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write ``value`` at ``key`` (attached to ``lease`` if given); returns the new revision.

        Raises :class:`~dynamo_triton.errors.LeaseExpiredError` if the lease is gone.
        """

    async def create(self, key: str, value: bytes, *, lease: int | None = None) -> bool:
        """Write only if ``key`` is absent (compare-and-set); True if written, False if it existed."""

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""

    async def list(self, prefix: str) -> list[KVEntry]:
        """Every entry whose key starts with ``prefix``, sorted by key."""

    def watch(self, prefix: str) -> Watch:
        """Open a watch on ``prefix`` (see :class:`Watch`)."""

    async def grant_lease(self, ttl: float) -> int:
        """Create a lease that expires ``ttl`` seconds after its last keep-alive; returns its id."""

    async def keep_alive(self, lease: int) -> None:
        """Refresh ``lease``; raises LeaseExpiredError if it already expired or was revoked."""

    async def revoke_lease(self, lease: int) -> None:
        """End ``lease`` now; its keys are deleted (watchers see the deletes). Unknown leases are ignored."""

    async def close(self) -> None:
        """Release connections and background tasks. Leases are not revoked (they expire)."""


class KVStoreFactory(Protocol):
    """What a store plugin registers: ``factory(settings) -> KVStore``, cheap, no I/O.

    Connecting happens lazily or in the first coroutine call, so building a store
    never blocks.
    """

    def __call__(self, settings: Any, /) -> KVStore: ...
