"""The stub reaper: a tiny process that kills a worker's python-backend stubs when the worker dies.

Triton's python backend forks one ``triton_python_backend_stub`` per model instance.
The stub watches its parent itself (``kill(parent_pid, 0)`` every 300 ms), but only
sees a SIGKILLed worker once that worker is reaped, and then it may hang for good
in its clean-up on a shared-memory mutex the dead worker held (measured: stubs alive
20+ minutes after their worker, each keeping its ``/dev/shm`` region).

``PR_SET_PDEATHSIG`` cannot be used instead: the signal follows the death of the
parent *thread*, and Triton forks stubs from its own threads (parallel instance
loading, stub restarts), which may end long before the worker does.

So a worker starting the embedded Triton also starts this reaper
(``python -m dyntriton_backend_triton.reaper WORKER_PID``) in its own session (a
signal to the worker's process group, from a terminal or from ``serve``, leaves it
alone). It holds the read end of a pipe the worker writes nothing to: end of file
(or a new parent) means the worker is gone. It then SIGKILLs every stub whose
command line names that worker as its parent (stubs get the parent pid as an
argument, so they are found even after they were re-parented), waits for them to
go, unlinks their ``/dev/shm`` regions (and those the worker had mapped: it reads
the worker's ``/proc/PID/maps`` every second, since stubs killed with the worker's
process group leave no command line behind), and exits. A worker that stops normally
closes the pipe after Triton stopped its stubs: the reaper finds nothing and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Reaper", "Stub", "find_stubs", "reap"]

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region_"
#: Position of the parent pid in the stub's arguments (after the binary, model path, region, sizes).
_PARENT_ARG = 5


@dataclass(frozen=True)
class Stub:
    """A python-backend stub process: its pid and the shared-memory region it was given."""

    pid: int
    region: str


def _stub_arguments(argv: list[str]) -> list[str] | None:
    """The stub's own arguments from a command line: the stub itself, or the ``bash -c "exec stub ..."``
    Triton runs first (with ``EXECUTION_ENV_PATH``)."""
    for index, arg in enumerate(argv):
        if arg.endswith(STUB_NAME):
            return argv[index:]
        if STUB_NAME in arg:
            words = arg.split()
            for start, word in enumerate(words):
                if word.endswith(STUB_NAME):
                    return words[start:]
    return None


def find_stubs(parent_pid: int) -> list[Stub]:
    """Every live stub (or the shell about to exec one) started by the process ``parent_pid``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:
            continue
        if STUB_NAME.encode() not in raw:
            continue
        args = _stub_arguments(raw.decode(errors="replace").rstrip("\0").split("\0"))
        if args is None or len(args) <= _PARENT_ARG or args[_PARENT_ARG] != str(parent_pid):
            continue
        region = args[2] if args[2].startswith(SHM_PREFIX) else ""
        found.append(Stub(int(cmdline.parent.name), region))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in {"Z", "X"}


def _mapped(names: set[str]) -> set[str]:
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            text = maps.read_text()
            mapped.update(name for name in names if name in text)
    return mapped


def mapped_regions(pid: int) -> set[str]:
    """The python-backend regions process ``pid`` maps now (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {line.rsplit("/", 1)[-1] for line in text.splitlines() if SHM_PREFIX in line}


def reap(parent_pid: int, *, regions: Iterable[str] = (), timeout: float = 3.0) -> tuple[list[Stub], list[str]]:
    """SIGKILL the stubs of ``parent_pid``, wait up to ``timeout`` for them to go, unlink their regions
    and ``regions`` (those no live process maps any more).

    :returns: the stubs killed and the ``/dev/shm`` regions removed.
    """
    stubs = find_stubs(parent_pid)
    for stub in stubs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stub.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(stub.pid) for stub in stubs):
        time.sleep(0.02)
    regions = set(regions) | {stub.region for stub in stubs if stub.region}
    removed = []
    for name in sorted(regions - _mapped(regions)):
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")
            removed.append(name)
    return stubs, removed


class Reaper:
    """The worker's handle on its reaper process (see the module docstring)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the reaper for this process; a failure is logged, never fatal (Linux ``/proc`` only)."""
        if not Path("/proc/self").exists():
            return
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "dyntriton_backend_triton.reaper", str(os.getpid())],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("could not start the stub reaper (%s): stubs may outlive a killed worker", exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipe (the reaper reaps what is left, normally nothing) and wait for it. Blocking."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str]) -> int:
    """``python -m dyntriton_backend_triton.reaper WORKER_PID``: wait for the worker to go, then reap."""
    worker = int(argv[0])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # leave with the worker, not before it
    regions: set[str] = set()
    next_scan = 0.0
    while os.getppid() == worker:
        if time.monotonic() >= next_scan:
            regions |= mapped_regions(worker)
            next_scan = time.monotonic() + 1.0
        readable, _, _ = select.select([sys.stdin.buffer], [], [], 0.25)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break
    stubs, removed = reap(worker, regions=regions)
    if stubs or removed:
        print(
            f"dyntriton reaper: worker pid {worker} is gone; killed {len(stubs)} python backend stub(s) "
            f"({', '.join(str(stub.pid) for stub in stubs)}) and removed {len(removed)} /dev/shm region(s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
