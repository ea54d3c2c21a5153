"""Leases on JetStream KV, which has none: lease records, and a sweeper in every store.

NATS 2.9's JetStream KV knows only a per-bucket age limit, not per-key leases. So a lease is a
record ``l.{id}`` in the same bucket (value ``{"ttl": seconds}``), and a key attached to it
carries the header ``Dyn-Lease: {id}``. ``keep_alive`` rewrites the record (compare-and-set on
its revision, so it fails once the record is gone); ``revoke_lease`` deletes the record, then
every key carrying the lease.

Expiry is done by the clients: every store that is connected runs a :class:`LeaseSweeper`
that follows the whole bucket (one ordered consumer) and keeps, per lease, the local time it
last *saw* the record written. A lease not rewritten for ``ttl`` seconds by that clock is
expired: the sweeper deletes the record with compare-and-set on the revision it saw (a
keep-alive that landed meanwhile wins, and nothing happens), and the one sweeper that won
deletes the lease's keys, each compare-and-set on its revision (a key rewritten without the
lease survives). Watchers see ordinary deletes. Only clocks' rates matter, never their
agreement: deadlines are measured on each sweeper's monotonic clock from what it observed.

Races closed by stream order (one bucket = one stream, one order for every sweeper):

- a put under a lease that was deleted before the put landed (the owner checked, then the
  lease expired) reaches every sweeper after the lease's delete: the key is an orphan and is
  deleted at once;
- a sweeper that won the record's delete but died before deleting the keys: the others, which
  saw the record deleted, delete what is left ``grace`` seconds later.

Keys of an expired lease vanish within about ``ttl`` (plus a keep-alive's travel) as long as
one dyntriton process is connected to the bucket; with none, nobody reads them, and the first
store to connect expires them ``ttl`` after it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dyntriton_kv_nats.follow import Follower, Record
from dyntriton_kv_nats.keys import KEY_TOKEN, LEASE_TOKEN

__all__ = ["LeaseSweeper", "lease_ttl", "lease_value"]

log = logging.getLogger(__name__)


def lease_value(ttl: float) -> bytes:
    """The value of a lease record."""
    return json.dumps({"ttl": ttl}).encode()


def lease_ttl(value: bytes) -> float:
    """The TTL stored in a lease record (10 s for a record that cannot be read)."""
    try:
        return float(json.loads(value)["ttl"])
    except (ValueError, KeyError, TypeError):
        return 10.0


@dataclass
class _Lease:
    ttl: float
    revision: int
    deadline: float


#: Deletes a bucket key if its latest revision is ``revision``; True if it did.
DeleteIf = Callable[[str, int], Awaitable[bool]]


class LeaseSweeper:
    """Expires the leases of one bucket (see the module docstring).

    :param delete_if: compare-and-delete of a bucket key, from the store.
    :param grace: seconds after a lease's record is deleted before leftover keys are deleted.
    """

    def __init__(self, js: Any, stream: str, prefix: str, delete_if: DeleteIf, *, grace: float = 1.0):
        self._follower = Follower(js, stream, prefix, f"{prefix}>", self._on_record)
        self._delete_if, self.grace = delete_if, grace
        self.leases: dict[int, _Lease] = {}
        self.members: dict[int, dict[str, int]] = {}
        self._owner: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, timeout: float) -> None:
        """Follow the bucket; returns once its current state is known, then sweeps in the background."""
        await self._follower.start(timeout)
        for lease in [lease for lease in self.members if lease not in self.leases]:
            self._spawn(self._delete_members(lease))  # orphans from leases that ended while nobody swept
        self._loop_task = asyncio.create_task(self._expire_loop(), name="dyntriton-nats-lease-sweeper")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_record(self, record: Record, initial: bool) -> None:
        token = record.key.partition(".")[0]
        if token == LEASE_TOKEN:
            lease = int(record.key[2:], 16)
            if record.deleted:
                if self.leases.pop(lease, None) is not None and not initial:
                    self._spawn(self._delete_members(lease, after=self.grace))
            else:
                ttl = lease_ttl(record.value)
                loop = asyncio.get_running_loop()
                self.leases[lease] = _Lease(ttl, record.revision, loop.time() + ttl)
                self._wake.set()
        elif token == KEY_TOKEN:
            previous = self._owner.pop(record.key, None)
            if previous is not None:
                self.members.get(previous, {}).pop(record.key, None)
            if record.deleted or record.lease is None:
                return
            self._owner[record.key] = record.lease
            self.members.setdefault(record.lease, {})[record.key] = record.revision
            if not initial and record.lease not in self.leases:
                # Stream order: the lease's record was deleted before this put landed.
                self._spawn(self._delete_members(record.lease))

    async def _expire_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for lease, state in list(self.leases.items()):
                if state.deadline <= now:
                    state.deadline = now + state.ttl  # not again until the outcome is seen
                    self._spawn(self._expire(lease, state.revision))
            self._wake.clear()
            upcoming = min((state.deadline for state in self.leases.values()), default=now + 3600)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, upcoming - loop.time())):
                    await self._wake.wait()

    async def _expire(self, lease: int, revision: int) -> None:
        try:
            won = await self._delete_if(f"{LEASE_TOKEN}.{lease:x}", revision)
        except Exception as exc:
            log.warning("could not expire NATS KV lease %x: %s", lease, exc)
            return
        if won:
            log.info("NATS KV lease %x expired (no keep-alive seen for its ttl); deleting its keys", lease)
            await self._delete_members(lease)

    async def _delete_members(self, lease: int, *, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)
        if lease in self.leases:
            return
        for key, revision in list(self.members.get(lease, {}).items()):
            try:
                await self._delete_if(key, revision)
            except Exception as exc:
                log.warning("could not delete %s of ended NATS KV lease %x: %s", key, lease, exc)
        if not self.members.get(lease):
            self.members.pop(lease, None)

    async def stop(self) -> None:
        """Stop following and sweeping (idempotent)."""
        tasks = [*self._tasks, *([self._loop_task] if self._loop_task is not None else [])]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._follower.stop()
