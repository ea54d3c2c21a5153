"""Stores under bad conditions: a lease owner killed with SIGKILL, etcd unreachable, corrupt files."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dynamo_triton.errors import StoreUnavailableError, UnknownNameError
from dynamo_triton.kv import EventKind
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.kv_contract import next_event

OWNER = textwrap.dedent(
    """
    import asyncio, sys, time
    from dynamo_triton.plugins import make_plugin_manager

    async def main():
        store = make_plugin_manager().kv_store(sys.argv[1], **dict(a.split("=", 1) for a in sys.argv[2:]))
        lease = await store.grant_lease(2)
        await store.put("owned/key", b"alive", lease=lease)
        print("ready", time.monotonic(), flush=True)
        while True:
            await asyncio.sleep(0.5)  # the owner's keep-alive cadence (TTL / 4)
            await store.keep_alive(lease)
            print("kept", time.monotonic(), flush=True)

    asyncio.run(main())
    """
)


async def seconds_until_delete_after_sigkill(store_name: str, **options: str) -> float:
    """Start an owner process holding a 2 s lease, SIGKILL it, return seconds until watchers see the DELETE."""
    args = [f"{k}={v}" for k, v in options.items()]
    owner = subprocess.Popen([sys.executable, "-c", OWNER, store_name, *args], stdout=subprocess.PIPE)
    try:
        assert owner.stdout is not None
        word, granted = owner.stdout.readline().split()
        assert word == b"ready"
        store = make_plugin_manager().kv_store(store_name, **options)
        try:
            async with store.watch("owned/") as watch:
                assert [e.key for e in watch.snapshot] == ["owned/key"]
                # Wait for the owner's keep-alives to carry the lease past its TTL (CLOCK_MONOTONIC is
                # system-wide): the key must still be there, kept alive, not re-created.
                while True:
                    word, at = (await asyncio.to_thread(owner.stdout.readline)).split()
                    assert word == b"kept"
                    if float(at) - float(granted) > 2 + 0.5:
                        break
                assert await store.get("owned/key") is not None
                owner.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                event = await next_event(watch, 10)
                assert (event.kind, event.key) == (EventKind.DELETE, "owned/key")
                return time.monotonic() - killed
        finally:
            await store.close()
    finally:
        owner.kill()
        owner.wait()


async def test_file_lease_expires_after_its_owner_is_sigkilled(tmp_path: Path) -> None:
    elapsed = await seconds_until_delete_after_sigkill("file", root=str(tmp_path / "kv"))
    assert elapsed < 2 + 1.5


async def test_etcd_lease_expires_after_its_owner_is_sigkilled(etcd_server: str) -> None:
    elapsed = await seconds_until_delete_after_sigkill("etcd", endpoints=etcd_server)
    assert elapsed < 2 + 3


async def test_unreachable_etcd_fails_fast_naming_the_endpoint() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = make_plugin_manager().kv_store("etcd", endpoints=f"http://127.0.0.1:{port}", timeout=2)
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
        await store.list("x/")
    assert time.monotonic() - start < 10
    await store.close()


async def test_corrupt_file_entries_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_plugin_manager().kv_store("file", root=str(tmp_path))
    await store.put("c/good", b"fine")
    (tmp_path / "data" / "c%2Fbad").write_bytes(b"\x00garbage without header")
    with caplog.at_level(logging.WARNING):
        entries = await store.list("c/")
    assert [e.key for e in entries] == ["c/good"]
    assert "corrupt" in caplog.text and "c%2Fbad" in caplog.text


def test_unknown_store_lists_the_available_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        make_plugin_manager().kv_store("redis")
    assert "etcd" in str(info.value) and "file" in str(info.value) and "mem" in str(info.value)
