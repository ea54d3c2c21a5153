"""Supervision of ``serve``'s child processes: restart what dies, with backoff, until it crash-loops.

A child that exits while ``serve`` is not stopping is a failure, unless it exited
with code 0 (someone stopped it on purpose; like systemd's ``Restart=on-failure``).
With ``--restart on-failure`` (the default) a failed child is restarted after a
backoff (0.5 s, doubling up to 8 s; back to 0.5 s once a run lasted 30 s). A worker
runs in its own process group: before it is restarted the whole group is
SIGKILLed, so Triton's python-backend stubs of the dead worker go with it.
``--restart no`` restarts nothing: ``serve`` exits 4 once no worker is left.

A child that failed ``limit`` times within ``window`` seconds is crash-looping:
``serve`` stops (exit code 5) instead of trying forever, so the supervisor above
it (systemd, Kubernetes) sees the failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dynamo_triton.cli.exits import CrashLoopError, WorkersDiedError

__all__ = ["Child", "RestartPolicy", "Supervisor", "exit_description"]

log = logging.getLogger("dyntriton.serve")


def exit_description(code: int) -> str:
    """``exited with code 3``, ``was killed by SIGKILL``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast failed children are restarted.

    :param restart: ``on-failure`` or ``no``.
    :param limit: failures of one child within ``window`` seconds that make a crash loop.
    :param healthy_after: seconds a run must last for the backoff to start again from ``backoff``.
    """

    restart: str = "on-failure"
    limit: int = 5
    window: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 8.0
    healthy_after: float = 30.0

    def delay(self, consecutive: int) -> float:
        """Seconds before the restart that follows ``consecutive`` failures in a row (1 = the first)."""
        return min(self.backoff * 2 ** max(consecutive - 1, 0), self.max_backoff)


@dataclass(eq=False)
class Child:
    """One supervised slot (``worker 0``, ``frontend 1``) and its current process.

    :param spawn: starts the process for this slot.
    :param own_group: the process leads its own process group (workers): kill the group when it dies.
    """

    name: str
    spawn: Callable[[], Awaitable[asyncio.subprocess.Process]]
    own_group: bool = False
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: collections.deque[float] = field(default_factory=collections.deque)
    consecutive: int = 0
    restarts: int = 0
    retired: set[int] = field(default_factory=set)

    async def start(self) -> asyncio.subprocess.Process:
        self.process = await self.spawn()
        self.started = time.monotonic()
        return self.process

    def kill_group(self) -> None:
        """SIGKILL what is left of the dead process's group (python-backend stubs)."""
        if self.own_group and self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


class Supervisor:
    """Watches ``children`` until ``stopped`` is set; restarts failed ones by ``policy``.

    :param on_restart: called with the child after each restart (e.g. to log when it serves again).
    """

    def __init__(
        self,
        children: list[Child],
        policy: RestartPolicy,
        *,
        on_restart: Callable[[Child], None] | None = None,
    ):
        self.children, self.policy, self._on_restart = children, policy, on_restart
        self._changed = asyncio.Event()
        self._restarting: set[asyncio.Task[None]] = set()

    def workers_alive(self) -> int:
        return sum(
            1
            for child in self.children
            if child.own_group and (child.process is not None and child.process.returncode is None)
        )

    async def run(self, stopped: asyncio.Future[Any]) -> None:
        """Return when ``stopped`` completes; raise CrashLoopError or WorkersDiedError (see the module docstring)."""
        waits: dict[asyncio.Future[Any], tuple[Child, asyncio.subprocess.Process]] = {}
        # Every process is watched once, even one already dead when first seen (a restarted
        # worker killed at once): its exit must still count, or its slot stays empty for good.
        watched: set[asyncio.subprocess.Process] = set()
        try:
            while not stopped.done():
                watched &= {child.process for child in self.children}  # forget replaced ones
                for child in self.children:
                    process = child.process
                    if process is not None and process not in watched:
                        watched.add(process)
                        waits[asyncio.ensure_future(process.wait())] = (child, process)
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({stopped, changed, *waits}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                self._changed.clear()
                for task in [task for task in waits if task.done()]:
                    child, process = waits.pop(task)
                    self._exited(child, process, task.result())
        finally:
            for task in [*waits, *self._restarting]:
                task.cancel()

    def _exited(self, child: Child, process: asyncio.subprocess.Process, code: int) -> None:
        if process.pid in child.retired or process is not child.process:  # replaced on purpose (rolling restart)
            return
        child.kill_group()
        ran = time.monotonic() - child.started
        if code == 0 or self.policy.restart == "no":
            log.error(
                "%s (pid %d) %s while serving; not restarting it", child.name, process.pid, exit_description(code)
            )
            if child.own_group and not self.workers_alive() and not self._restarting:
                total = sum(1 for c in self.children if c.own_group)
                raise WorkersDiedError(
                    f"every worker process exited ({total} of {total}); nothing is left to serve",
                    hint="read the workers' errors above; with --restart on-failure (the default) serve restarts "
                    "workers that fail",
                )
            return
        now = time.monotonic()
        child.failures.append(now)
        while child.failures and child.failures[0] < now - self.policy.window:
            child.failures.popleft()
        if len(child.failures) >= self.policy.limit:
            raise CrashLoopError(
                f"{child.name} failed {len(child.failures)} times within {self.policy.window:g} s "
                f"(last: pid {process.pid} {exit_description(code)}); giving up",
                hint="read its errors above; fix the cause, then start serve again",
            )
        child.consecutive = 1 if ran >= self.policy.healthy_after else child.consecutive + 1
        delay = self.policy.delay(child.consecutive)
        log.error(
            "%s (pid %d) %s after %.1f s; restarting it in %.1f s (%d failure(s) within %g s; %d stop serve)",
            child.name,
            process.pid,
            exit_description(code),
            ran,
            delay,
            len(child.failures),
            self.policy.window,
            self.policy.limit,
        )
        task = asyncio.ensure_future(self._restart(child, delay))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, child: Child, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            process = await child.start()
        except OSError as exc:
            log.error("%s could not be restarted: %s", child.name, exc)
            return
        child.restarts += 1
        log.warning("%s restarted as pid %d (restart %d)", child.name, process.pid, child.restarts)
        if self._on_restart is not None:
            self._on_restart(child)
        self._changed.set()

    async def replace(self, child: Child, ready: Callable[[asyncio.subprocess.Process], Awaitable[None]]) -> None:
        """Start a new process for ``child``, wait until ``ready``, then SIGTERM the old one (it drains)."""
        old = child.process
        if old is not None:
            child.retired.add(old.pid)
        new = await child.start()
        try:
            await ready(new)
        except BaseException:
            child.retired.discard(old.pid if old else -1)
            raise
        self._changed.set()
        if old is not None and old.returncode is None:
            old.send_signal(signal.SIGTERM)
            await old.wait()
        log.info("%s replaced: pid %d serves, pid %s drained and exited", child.name, new.pid, old.pid if old else "-")
