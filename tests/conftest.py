"""Suite-wide setup: runs before any test module imports grpc."""

from __future__ import annotations

import os

import pytest

# Triton's python backend forks its stub process; grpc's fork handlers, when enabled, abort a
# process that has run a grpc server before ("Check failed: is_forking != was_forking"). The
# dyntriton CLI sets the same default for the processes it starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def triton_missing() -> str | None:
    """Why the embedded Triton cannot run here, or None when it can."""
    try:
        from dyntriton_backend_triton.locator import locate_triton
    except ImportError as exc:
        return f"the triton backend plugin is not importable: {exc}"
    try:
        locate_triton(os.environ.get("TRITON_HOME"))
    except Exception as exc:
        return f"no Triton installation: {exc}"
    return None


@pytest.fixture(scope="session")
def require_triton() -> None:
    """Skip without Triton locally; under CI=true a missing Triton fails instead."""
    reason = triton_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Triton tests must run in CI, but: {reason}")
        pytest.skip(reason)
