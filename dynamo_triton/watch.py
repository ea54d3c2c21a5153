"""QueueWatch: a ready-made :class:`~dynamo_triton.kv.Watch` for store plugins.

A store opens it with the snapshot it listed and feeds it events with
``push`` (or a terminal error with ``fail``); the consumer iterates. Stores
register the watch *before* taking the snapshot, or take both atomically, so
nothing is lost between them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

from dynamo_triton.kv import KVEntry, WatchEvent

__all__ = ["QueueWatch"]

_CLOSED = object()


class QueueWatch:
    """A watch fed by its store.

    :param opener: coroutine run on ``__aenter__``; it must set ``snapshot`` (via
        :meth:`set_snapshot`) and start feeding events.
    :param closer: coroutine run once when the watch closes (stop feeding).
    """

    def __init__(
        self,
        opener: Callable[[QueueWatch], Awaitable[None]],
        closer: Callable[[QueueWatch], Awaitable[None]] | None = None,
    ):
        self._opener, self._closer = opener, closer
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.snapshot: list[KVEntry] = []
        self._closed = False
        self._feeders: list[asyncio.Task[None]] = []

    def set_snapshot(self, entries: list[KVEntry]) -> None:
        """Record the entries present when the watch opened (sorted by key)."""
        self.snapshot = sorted(entries, key=lambda entry: entry.key)

    def feed(self, feeder: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        """Run ``feeder`` (which calls :meth:`push`/:meth:`fail`) until the watch closes; then cancel it."""
        self._feeders.append(asyncio.create_task(feeder, name=name))

    def push(self, event: WatchEvent) -> None:
        """Deliver one event (non-blocking; call from the watch's event loop)."""
        if not self._closed:
            self._queue.put_nowait(event)

    def fail(self, exc: BaseException) -> None:
        """End the watch: the consumer's iteration raises ``exc``."""
        if not self._closed:
            self._queue.put_nowait(exc)

    async def __aenter__(self) -> QueueWatch:
        await self._opener(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, WatchEvent)
            yield item

    async def aclose(self) -> None:
        """Stop the watch; iteration ends."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(_CLOSED)
        for task in self._feeders:
            task.cancel()
        for task in self._feeders:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._closer is not None:
            await self._closer(self)
