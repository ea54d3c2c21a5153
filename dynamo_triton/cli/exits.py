"""Exit codes of dyntriton commands, and the start-up phase that gives a failure its code.

======  =====================================================================================
code    meaning
======  =====================================================================================
0       stopped as asked (SIGINT/SIGTERM) or the command did its job
1       an error (the message says which; ``Hint:`` says what to do)
2       a usage error (bad option or argument)
3       could not start: a store, port, backend or model failed during start-up
4       ``serve``: its workers died after start-up and none is left (``--restart no``, or they exited 0)
5       ``serve``: a child process kept failing (a crash loop: 5 failures within 60 s); restarts given up
6       ``worker``: its backend broke in a way only a new process cures (a Triton python stub died);
        its supervisor (``serve``, systemd, Kubernetes) should restart it
130     interrupted (Ctrl-C) during a short command
======  =====================================================================================

Supervisors (systemd, Kubernetes) restart on any non-zero code; scripts can tell a
configuration that never worked (3) from a crash in service (4) and from a crash loop that
``serve``'s own restarts could not cure (5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dynamo_triton.errors import DyntritonError

__all__ = [
    "EXIT_BACKEND_BROKEN",
    "EXIT_CRASH_LOOP",
    "EXIT_ERROR",
    "EXIT_START_FAILED",
    "EXIT_WORKERS_DIED",
    "CrashLoopError",
    "WorkersDiedError",
    "exit_code_of",
    "starting",
]

EXIT_ERROR = 1
EXIT_START_FAILED = 3
EXIT_WORKERS_DIED = 4
EXIT_CRASH_LOOP = 5
EXIT_BACKEND_BROKEN = 6


class WorkersDiedError(DyntritonError):
    """Every worker ``serve`` started has exited while serving (exit code 4)."""

    exit_code = EXIT_WORKERS_DIED

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint, status="UNAVAILABLE")


class CrashLoopError(DyntritonError):
    """A child of ``serve`` failed too often in a short time; ``serve`` gave up restarting it (exit code 5)."""

    exit_code = EXIT_CRASH_LOOP

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint, status="UNAVAILABLE")


def exit_code_of(exc: DyntritonError) -> int:
    """The process exit code for an error that ends a command (1 unless the error carries its own)."""
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) and code > 0 else EXIT_ERROR


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """Mark the ``with`` body as start-up: a DyntritonError raised in it exits with code 3."""
    try:
        yield
    except DyntritonError as exc:
        if getattr(exc, "exit_code", None) is None:
            exc.exit_code = EXIT_START_FAILED  # type: ignore[attr-defined]
        raise
