"""Exponential backoff between retries: the one helper every retry loop of the runtime uses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays that double after each failure, up to a cap, and start over after a success.

    ``delay`` is the pause the next :meth:`wait` takes (say it in the log line before waiting)::

        backoff = Backoff(first=0.2)
        while True:
            try:
                await work()
                backoff.reset()
            except DyntritonError as exc:
                log.warning("failed (%s); retrying in %.1f s", exc, backoff.delay)
            await backoff.wait()

    :param first: seconds of the first pause (> 0).
    :param cap: longest pause, in seconds.
    :param sleep: how to pause (``asyncio.sleep``; unit tests inject their own).
    """

    __slots__ = ("_sleep", "cap", "delay", "first")

    def __init__(self, first: float, *, cap: float = 5.0, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep):
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={first!r}, cap={cap!r}")
        self.first, self.cap, self._sleep = first, cap, sleep
        self.delay = first

    def reset(self) -> None:
        """A success: the next pause is ``first`` again."""
        self.delay = self.first

    async def wait(self) -> None:
        """Pause for ``delay`` s, then double it (up to ``cap``) for the next failure."""
        await self._sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)
