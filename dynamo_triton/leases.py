"""LeaseKeeper: hold one store lease alive in the background and say when it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from dynamo_triton.errors import DyntritonError, LeaseExpiredError
from dynamo_triton.kv import KVStore

__all__ = ["LeaseKeeper"]

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Grants a lease of ``ttl`` seconds and refreshes it every ``ttl / 3``.

    Contract: after ``await start()``, ``lease_id`` is valid. If a keep-alive
    fails (the lease expired, or the store stayed unreachable until the lease must
    have expired) the keeper stops and calls ``on_lost()`` once; the owner then
    registers again with a new keeper. ``close(revoke=True)`` ends the lease now
    (its keys vanish); ``close(revoke=False)`` just stops refreshing it.
    """

    def __init__(self, store: KVStore, ttl: float, *, on_lost: Callable[[], None] | None = None):
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.store, self.ttl, self._on_lost = store, ttl, on_lost
        self.lease_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()

    async def start(self) -> int:
        """Grant the lease and start refreshing it; returns its id."""
        self.lease_id = await self.store.grant_lease(self.ttl)
        self._task = asyncio.create_task(self._refresh(self.lease_id), name=f"dyntriton-lease-{self.lease_id}")
        return self.lease_id

    async def _refresh(self, lease: int) -> None:
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.store.keep_alive(lease)
                last_ok = loop.time()
            except LeaseExpiredError as exc:
                log.warning("lease %x expired: %s", lease, exc)
                break
            except DyntritonError as exc:
                if loop.time() - last_ok >= self.ttl:
                    log.warning("lease %x presumed lost: no keep-alive for %.1f s (%s)", lease, self.ttl, exc)
                    break
                log.warning("lease %x keep-alive failed (%s); retrying", lease, exc)
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost()

    async def close(self, *, revoke: bool = True) -> None:
        """Stop refreshing; with ``revoke`` end the lease now so its keys disappear."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and self.lease_id is not None and not self.lost.is_set():
            await self.store.revoke_lease(self.lease_id)
