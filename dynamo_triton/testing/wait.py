"""The one way tests wait for a condition: poll it until it holds, fail naming it after a deadline.

Tests never ``sleep`` to synchronise: they wait on an event, or poll a condition with these. Both
take ``(check, timeout, what)`` and return the seconds the wait took (for tests that report it,
never for timed assertions)::

    await until(lambda: table.instance("m", "a") is not None, 10, "the frontend to see worker a")
    wait_until(lambda: model_ready(url, "identity"), 60, "the model to be ready", cluster)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["until", "wait_until"]


class _HasLogs(Protocol):
    def logs(self) -> str: ...


async def until(
    check: Callable[[], object | Awaitable[object]], timeout: float, what: str, *, every: float = 0.01
) -> float:
    """Poll ``check()`` (a function or a coroutine function) every ``every`` s until its result is truthy.

    Returns the seconds it took; raises AssertionError saying ``what`` did not happen after ``timeout``
    seconds. Exceptions from ``check`` propagate (a check that cannot run is a failure, not a "not yet").
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - began
        if loop.time() - began > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


def wait_until(
    check: Callable[[], object], timeout: float, what: str, cluster: _HasLogs | None = None, *, every: float = 0.1
) -> float:
    """Blocking :func:`until` for tests that drive other processes (servers, CLIs).

    ``check`` raising counts as "not yet" (a server still starting refuses connections). On timeout
    the AssertionError carries ``cluster.logs()`` when a cluster is given.
    """
    began = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - began
        if time.monotonic() - began > timeout:
            logs = cluster.logs() if cluster is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs}")
        time.sleep(every)
