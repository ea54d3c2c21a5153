"""Follow a bucket: the latest message of every matching key, then every message after, none lost.

One JetStream ordered push consumer (deliver policy ``last per subject``) does both: it first
delivers each key's latest message as of its creation, then every new one, in stream order; the
client re-creates it from the last sequence seen if the server loses it. The initial state is
over when a message says nothing more is pending (or nothing was pending at all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LEASE_HEADER", "Follower", "Record"]

#: Header naming the lease (hex id) a key is attached to.
LEASE_HEADER = "Dyn-Lease"
_OPERATION = "KV-Operation"


@dataclass(frozen=True, slots=True)
class Record:
    """One bucket message: ``key`` is the bucket key; ``deleted`` for delete/purge markers."""

    key: str
    value: bytes
    revision: int
    deleted: bool
    lease: int | None


def record_of(key: str, value: bytes | None, revision: int, headers: dict[str, str] | None) -> Record:
    """A record from a message's parts (headers as nats-py gives them)."""
    headers = headers or {}
    lease = headers.get(LEASE_HEADER)
    return Record(
        key=key,
        value=value or b"",
        revision=revision,
        deleted=headers.get(_OPERATION) in ("DEL", "PURGE"),
        lease=int(lease, 16) if lease else None,
    )


class Follower:
    """Calls ``on_record(record, initial)`` for every message of ``subject`` in ``stream``.

    ``initial`` is True while the latest-per-key state is being delivered. :meth:`start` returns
    once that state is complete; everything after it arrives with ``initial=False``, in order.
    """

    def __init__(self, js: Any, stream: str, prefix: str, subject: str, on_record: Callable[[Record, bool], None]):
        self.js, self.stream, self.prefix, self.subject = js, stream, prefix, subject
        self.on_record = on_record
        self.synced = asyncio.Event()
        self._sub: Any = None

    async def start(self, timeout: float) -> None:
        """Subscribe and wait until the initial state was delivered (TimeoutError after ``timeout`` s)."""
        from nats.js.api import DeliverPolicy

        gate = asyncio.Event()

        async def deliver(msg: Any) -> None:
            if not gate.is_set():
                await gate.wait()
            meta = msg.metadata
            record = record_of(msg.subject[len(self.prefix) :], msg.data, meta.sequence.stream, msg.headers)
            self.on_record(record, not self.synced.is_set())
            if meta.num_pending == 0:
                self.synced.set()

        self._sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            cb=deliver,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            pending_bytes_limit=1 << 30,
        )
        try:
            info = await self._sub.consumer_info()
            if info.num_pending == 0 and self._sub.delivered == 0:
                self.synced.set()
            gate.set()
            async with asyncio.timeout(timeout):
                await self.synced.wait()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop following (idempotent)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection is closing or gone: nothing left to stop
                return
