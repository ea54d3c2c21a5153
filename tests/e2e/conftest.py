"""Fixtures for end-to-end tests: real dyntriton processes, real Triton, real tritonclient."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import Cluster


def triton_missing() -> str | None:
    """Why the embedded Triton cannot run here, or None when it can."""
    try:
        from dyntriton_backend_triton.locator import locate_triton  # type: ignore[import-not-found]
    except ImportError as exc:
        return f"the triton backend plugin is not importable: {exc}"
    try:
        locate_triton()
    except Exception as exc:
        return f"no Triton installation: {exc}"
    return None


@pytest.fixture(scope="session")
def require_triton() -> None:
    reason = triton_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"end-to-end tests must run in CI, but: {reason}")
        pytest.skip(reason)


@pytest.fixture
def cluster(tmp_path: Path, require_triton: None) -> Iterator[Cluster]:
    env = dict(os.environ)
    env["DYN_FILE_KV"] = str(tmp_path / "kv")
    env["DYN_LOG"] = "info"
    env.pop("DYN_STORE_KV", None)
    c = Cluster(tmp_path, env=env)
    try:
        yield c
    finally:
        c.stop()
