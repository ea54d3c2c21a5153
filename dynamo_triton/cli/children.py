"""Child processes of ``serve`` and ``frontend``: started to die with their parent, stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import signal
import sys
from collections.abc import Iterable
from typing import cast

import click

__all__ = ["die_with_parent", "forwarded_options", "spawn", "stop_children"]

log = logging.getLogger("dyntriton.children")


def die_with_parent() -> None:
    """In a child: get SIGTERM (and drain) if the parent dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def spawn(args: list[str]) -> asyncio.subprocess.Process:
    """Start ``python -m dynamo_triton *args`` as a child that dies with this process."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dynamo_triton", *args, preexec_fn=die_with_parent
    )


def forwarded_options(ctx: click.Context, names: set[str], overrides: dict[str, object]) -> list[str]:
    """The command line that repeats this invocation's values of the options called ``names``.

    Values the user left unset are forwarded too (explicitly), so a child sees exactly what
    this process sees even if its environment differs; ``overrides`` replace values by name.
    """
    argv: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name not in names:
            continue
        value = overrides.get(param.name, ctx.params.get(param.name))
        flag = max(param.opts, key=len)
        if param.is_flag:
            if value:
                argv.append(flag)
        elif param.multiple:
            for item in cast(Iterable[object], value or ()):
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


async def stop_children(children: list[asyncio.subprocess.Process], timeout: float = 40.0) -> None:
    """SIGTERM every child (they drain), then SIGKILL whichever is still there after ``timeout``."""
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), timeout)
        except TimeoutError:
            log.warning("child pid %d did not stop in %g s; killing it", child.pid, timeout)
            child.kill()
            await child.wait()
