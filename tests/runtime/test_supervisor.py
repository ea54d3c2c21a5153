"""serve's Supervisor with real child processes: every exit counts, even one that came first.

Runs each scenario on asyncio's loop and on uvloop (the CLI's loop), which reap children differently.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from dynamo_triton.cli.exits import CrashLoopError
from dynamo_triton.cli.supervisor import Child, RestartPolicy, Supervisor

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}
FAST = RestartPolicy(limit=3, window=60.0, backoff=0.01, max_backoff=0.01)


async def _dead_on_arrival() -> asyncio.subprocess.Process:
    """A child that has failed and been reaped before anyone watches it (killed right after its start)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
    await process.wait()
    return process


@pytest.mark.parametrize("loop", LOOPS)
def test_a_child_dead_before_it_is_watched_is_restarted_until_the_crash_loop(loop: str) -> None:
    spawned: list[int] = []

    async def spawn() -> asyncio.subprocess.Process:
        process = await _dead_on_arrival()
        spawned.append(process.pid)
        return process

    async def scenario() -> None:
        child = Child("worker 0", spawn, own_group=False)
        await child.start()
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(CrashLoopError, match="worker 0 failed 3 times within 60 s"):
            await asyncio.wait_for(Supervisor([child], FAST).run(stopped), 20)
        assert len(spawned) == 3, spawned
        assert child.restarts == 2

    LOOPS[loop](scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_child_that_exits_0_is_not_restarted_and_each_exit_counts_once(loop: str) -> None:
    spawned: list[int] = []

    async def spawn() -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        spawned.append(process.pid)
        return process

    async def scenario() -> None:
        child = Child("frontend 1", spawn)
        await child.start()
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()
        supervisor = Supervisor([child], FAST)
        running = asyncio.ensure_future(supervisor.run(stopped))
        assert child.process is not None
        await child.process.wait()
        for _ in range(20):  # the loop goes round 20 times more: nothing may be counted again
            supervisor._changed.set()
            async with asyncio.timeout(5):  # the supervisor clears it once it has woken and looked
                while supervisor._changed.is_set():
                    await asyncio.sleep(0)
        stopped.set_result(None)
        await asyncio.wait_for(running, 5)
        assert spawned == [spawned[0]] and child.restarts == 0 and not child.failures

    LOOPS[loop](scenario())
