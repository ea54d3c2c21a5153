"""`dyntriton store ls|get|watch` against real stores, run as a user would (a subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from dynamo_triton.plugins import make_plugin_manager


def dyntriton(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *args], capture_output=True, text=True, env=env, timeout=60
    )


async def put(root: Path, key: str, value: bytes) -> None:
    store = make_plugin_manager().kv_store("file", root=str(root))
    await store.put(key, value)


def test_ls_and_get_on_the_file_store(tmp_path: Path) -> None:
    env = {**os.environ, "DYN_FILE_KV": str(tmp_path)}
    asyncio.run(put(tmp_path, "dyntriton/v1/x/models/m/1", b'{"a": 1}'))
    asyncio.run(put(tmp_path, "other", b"\xff\xfe"))
    listed = dyntriton("store", "ls", "dyntriton/", env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["dyntriton/v1/x/models/m/1"]
    as_json = dyntriton("store", "ls", "--json", env=env)
    assert [json.loads(line)["key"] for line in as_json.stdout.splitlines()] == ["dyntriton/v1/x/models/m/1", "other"]
    got = dyntriton("store", "get", "other", env=env)
    assert got.returncode == 0 and "2 bytes: fffe" in got.stdout
    missing = dyntriton("store", "get", "nope", env=env)
    assert missing.returncode == 1 and "no key 'nope'" in missing.stderr


def test_watch_prints_existing_keys_then_events(tmp_path: Path) -> None:
    env = {**os.environ, "DYN_FILE_KV": str(tmp_path)}
    asyncio.run(put(tmp_path, "w/a", b"1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynamo_triton", "store", "watch", "w/", "--count", "1", "--timeout", "30"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first == {"event": "existing", "key": "w/a", "value": "1", "revision": first["revision"], "lease": None}
    # The snapshot comes from the watch itself: once it is printed, the watch is in place.
    asyncio.run(put(tmp_path, "w/b", b"2"))
    second = json.loads(proc.stdout.readline())
    assert (second["event"], second["key"], second["value"]) == ("put", "w/b", "2")
    assert proc.wait(30) == 0


def test_etcd_store_through_the_cli(etcd_server: str) -> None:
    env = {**os.environ, "ETCD_ENDPOINTS": etcd_server}

    async def seed() -> None:
        store = make_plugin_manager().kv_store("etcd", endpoints=etcd_server)
        await store.put("cli/key", b"value")
        await store.close()

    asyncio.run(seed())
    got = dyntriton("store", "--store-kv", "etcd", "get", "cli/key", env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "value"
    listed = dyntriton(
        "store", "ls", "cli/", "--store-kv", "etcd", "--etcd-endpoints", etcd_server, env=dict(os.environ)
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["cli/key"]


def test_unknown_store_names_the_available_ones(tmp_path: Path) -> None:
    result = dyntriton("store", "--store-kv", "redis", "ls", env={**os.environ, "DYN_FILE_KV": str(tmp_path)})
    assert result.returncode == 1
    assert "unknown kv-store 'redis'" in result.stderr and "etcd, file, mem" in result.stderr


def test_store_options_go_before_or_after_the_sub_command(tmp_path: Path) -> None:
    asyncio.run(put(tmp_path / "kv", "k", b"v"))
    env = {k: v for k, v in os.environ.items() if k not in ("DYN_FILE_KV", "DYN_STORE_KV")}
    after = dyntriton("store", "ls", "--store-kv", "file", "--file-kv-root", str(tmp_path / "kv"), env=env)
    assert after.returncode == 0, after.stderr
    assert after.stdout.split() == ["k"]
    before = dyntriton("store", "--file-kv-root", str(tmp_path / "kv"), "get", "k", env=env)
    assert before.stdout.strip() == "v"
    # A value after the sub-command wins over the group's (and over the environment).
    env["DYN_FILE_KV"] = str(tmp_path / "elsewhere")
    wins = dyntriton(
        "store",
        "--file-kv-root",
        str(tmp_path / "nowhere"),
        "get",
        "k",
        "--file-kv-root",
        str(tmp_path / "kv"),
        env=env,
    )
    assert wins.stdout.strip() == "v", wins.stderr


def test_an_empty_listing_says_so_on_stderr(tmp_path: Path) -> None:
    result = dyntriton("store", "ls", "dyntriton/", env={**os.environ, "DYN_FILE_KV": str(tmp_path)})
    assert result.returncode == 0 and result.stdout == ""
    assert "no keys under 'dyntriton/' in the file store" in result.stderr


def test_etcd_options_on_serve_worker_and_frontend_match_store() -> None:
    for command in ("serve", "worker", "frontend", "store"):
        help_text = dyntriton(command, "--help", env={**os.environ, "COLUMNS": "200"}).stdout
        for option, variable in (
            ("--store-kv", "DYN_STORE_KV"),
            ("--etcd-endpoints", "ETCD_ENDPOINTS"),
            ("--file-kv-root", "DYN_FILE_KV"),
        ):
            assert option in help_text and variable in help_text, (command, option)
