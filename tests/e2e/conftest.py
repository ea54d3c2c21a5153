"""Fixtures for end-to-end tests: real dyntriton processes, real Triton, real tritonclient."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import Cluster


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
