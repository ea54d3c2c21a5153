"""Child processes of ``serve`` and ``frontend``: started to die with their parent, stopped in order.

A child started with :func:`spawn_ready` gets ``--ready-fd N``: it writes ``ready`` to that
pipe once it serves, which :func:`ready` awaits (a rolling restart waits for it before it
stops the process being replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Mapping

__all__ = [
    "child_env",
    "die_with_parent",
    "notify_ready",
    "own_group_dying_with_parent",
    "ready",
    "spawn",
    "spawn_ready",
    "stop_children",
]

log = logging.getLogger("dyntriton.children")


def die_with_parent() -> None:
    """In a child: get SIGTERM (and drain) if the parent dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def own_group_dying_with_parent() -> None:
    """In a child: lead a process group of its own (killed whole later), and :func:`die_with_parent`."""
    os.setpgid(0, 0)
    die_with_parent()


def child_env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    """This process's environment plus ``extra`` (secret settings), or None (inherit) without any."""
    return {**os.environ, **extra} if extra else None


async def spawn(args: list[str], env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start ``python -m dynamo_triton *args`` as a child that dies with this process.

    :param env: variables added to the child's environment (the secrets of :func:`dynamo_triton.settings.render_argv`).
    """
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dynamo_triton", *args, preexec_fn=die_with_parent, env=child_env(env)
    )


async def spawn_ready(args: list[str], env: Mapping[str, str] | None = None) -> asyncio.subprocess.Process:
    """Like :func:`spawn`, with ``--ready-fd`` appended; :func:`ready` waits for the child to serve."""
    read_fd, write_fd = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dynamo_triton",
            *args,
            "--ready-fd",
            str(write_fd),
            pass_fds=(write_fd,),
            preexec_fn=die_with_parent,
            env=child_env(env),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    waiter = asyncio.ensure_future(_read_ready(read_fd, process.pid))
    waiter.add_done_callback(lambda task: task.cancelled() or task.exception())  # nobody may wait for it
    process.dyntriton_ready = waiter  # type: ignore[attr-defined]
    return process


async def _read_ready(fd: int, pid: int) -> None:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        line = await reader.readline()
    finally:
        transport.close()
    if not line.startswith(b"ready"):
        raise RuntimeError(f"pid {pid} exited before it served")


async def ready(process: asyncio.subprocess.Process, timeout: float = 60.0) -> None:
    """Wait until a child started by :func:`spawn_ready` serves; raises RuntimeError if it exits first."""
    waiter = getattr(process, "dyntriton_ready", None)
    if waiter is None:
        raise RuntimeError(f"pid {process.pid} was not started with a readiness pipe")
    try:
        await asyncio.wait_for(asyncio.shield(waiter), timeout)
    except TimeoutError:
        raise RuntimeError(f"pid {process.pid} did not serve within {timeout:g} s") from None


def notify_ready(fd: int | None) -> None:
    """In a child started by :func:`spawn_ready`: say it serves (``--ready-fd``)."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, b"ready\n")
        os.close(fd)


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
