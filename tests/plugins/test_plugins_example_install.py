"""pip-installing a third-party plugin is all it takes: examples/dyntriton-kv-sqlite, end to end.

The example is installed the way pip installs any distribution, into a private
``--target`` folder (offline: no build isolation, no dependencies fetched), and
that folder is put on PYTHONPATH for real ``dyntriton`` processes. Nothing in
dyntriton knows the plugin: it is found through its entry point only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip-installs a distribution and runs real processes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dyntriton-kv-sqlite"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
    installed = subprocess.run(
        [*pip, "--target", str(target), str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    return target


def run(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(site), **env}
    )


def test_the_installed_plugin_is_listed(site: Path) -> None:
    result = run([sys.executable, "-m", "dynamo_triton", "plugins", "list", "--json"], site)
    assert result.returncode == 0, result.stderr
    record = next(r for r in json.loads(result.stdout) if r["name"] == "kv-sqlite")
    assert record["distribution"] == "dyntriton-kv-sqlite" and record["version"] == "0.1.0"
    assert record["status"] == "ok" and record["provides"] == ["kv-store: sqlite"] and not record["builtin"]


def test_the_installed_store_works_through_the_cli(site: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "kv.sqlite")
    seed = (
        "import asyncio; from dynamo_triton.plugins import make_plugin_manager\n"
        "store = make_plugin_manager().kv_store('sqlite')\n"
        "asyncio.run(store.put('dyntriton/v1/demo/models/m/1', b'card'))\n"
    )
    assert run([sys.executable, "-c", seed], site, DYNTRITON_SQLITE_KV=db).returncode == 0
    listed = run(
        [sys.executable, "-m", "dynamo_triton", "store", "--store-kv", "sqlite", "ls"], site, DYNTRITON_SQLITE_KV=db
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["dyntriton/v1/demo/models/m/1"]
    got = run(
        [sys.executable, "-m", "dynamo_triton", "store", "--store-kv", "sqlite", "get", "dyntriton/v1/demo/models/m/1"],
        site,
        DYNTRITON_SQLITE_KV=db,
    )
    assert got.stdout.strip() == "card"


def test_the_plugin_passes_our_kv_contract_suite(site: Path) -> None:
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(EXAMPLE),
            str(EXAMPLE / "tests"),
        ],
        site,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failed" not in result.stdout
