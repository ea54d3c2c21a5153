"""The file store's watch: inotify-driven across processes, never blind when its folder goes, polling on request."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from dyntriton_kv_file.store import FileStore

from dynamo_triton.errors import ConfigError
from dynamo_triton.kv import EventKind, KVStore, Watch, WatchEvent
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.kv_contract import KVStoreContract, next_event
from dynamo_triton.testing.wait import until

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from dynamo_triton.plugins import make_plugin_manager

    async def main():
        store = make_plugin_manager().kv_store("file", root=sys.argv[1])
        for op in sys.argv[2:]:
            verb, key = op.split(":", 1)
            if verb == "put":
                await store.put(key, key.encode())
            else:
                await store.delete(key)
        await store.close()

    asyncio.run(main())
    """
)


async def write_from_another_process(root: Path, *ops: str) -> None:
    """Run ``put:KEY`` / ``delete:KEY`` operations on the store at ``root`` from a separate Python process."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, str(root), *ops)
    assert await asyncio.wait_for(process.wait(), 60) == 0


async def events_until(watch: Watch, done: Callable[[list[WatchEvent]], bool], timeout: float = 10) -> list[WatchEvent]:
    """Collect the watch's events until ``done(events)`` holds; fail after ``timeout`` seconds."""
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        events.append(await next_event(watch, max(deadline - time.monotonic(), 0.01)))
    return events


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux-only (elsewhere the store polls)")


def kinds(events: list[WatchEvent]) -> set[tuple[EventKind, str]]:
    return {(event.kind, event.key) for event in events}


class TestFileStorePolling(KVStoreContract):
    """The forced polling fallback keeps the whole contract."""

    @pytest.fixture
    async def kv_store(self, tmp_path: Path) -> AsyncIterator[KVStore]:
        store = make_plugin_manager().kv_store("file", root=str(tmp_path / "kv"), watch="poll")
        yield store
        await store.close()


def file_store(root: Path, **options: str) -> FileStore:
    """A file store built through the plugin manager, as the CLI builds it."""
    store = make_plugin_manager().kv_store("file", root=str(root), **options)
    assert isinstance(store, FileStore)
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    store = file_store(tmp_path / "kv")
    yield store
    await store.close()


@linux_only
async def test_watch_sees_another_process_without_rescanning_on_a_timer(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "kv"
    await store.put("p/old", b"0")
    with caplog.at_level(logging.INFO, logger="dyntriton_kv_file"):
        async with store.watch("p/") as watch:
            assert [e.key for e in watch.snapshot] == ["p/old"]
            scans_after_open = store.scans
            await write_from_another_process(root, "put:p/a", "put:q/ignored", "put:p/b", "delete:p/old")
            expected = {(EventKind.PUT, "p/a"), (EventKind.PUT, "p/b"), (EventKind.DELETE, "p/old")}
            events = await events_until(watch, lambda seen: kinds(seen) >= expected)
            assert all(event.key.startswith("p/") for event in events)
            # Let at least three lease sweeps (>= 1 s) go by: an idle inotify watch never rescans data/.
            sweeps = store.sweeps
            await until(lambda: store.sweeps >= sweeps + 3, 10, "three lease sweeps")
            assert store.scans == scans_after_open, "the inotify watch rescanned the folder"
    assert "poll" not in caplog.text, caplog.text


async def test_two_watchers_share_one_folder(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    first, second = file_store(root), file_store(root)
    try:
        async with first.watch("s/") as one, second.watch("s/") as two:
            await write_from_another_process(root, "put:s/x")
            for watch in (one, two):
                event = await next_event(watch, 10)
                assert (event.kind, event.key, event.value) == (EventKind.PUT, "s/x", b"s/x")
    finally:
        await first.close()
        await second.close()


@linux_only
async def test_folder_removed_under_a_live_watch_then_recreated_by_a_write(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "kv"
    await store.put("f/a", b"1")
    await store.put("f/b", b"2")
    with caplog.at_level(logging.WARNING, logger="dyntriton_kv_file"):
        async with store.watch("f/") as watch:
            shutil.rmtree(root)
            events = await events_until(watch, lambda seen: len(seen) >= 2)
            assert kinds(events) == {(EventKind.DELETE, "f/a"), (EventKind.DELETE, "f/b")}
            await until(lambda: "was removed" in caplog.text, 10, "a log line saying the folder was removed")

            await write_from_another_process(root, "put:f/c")  # the writer creates the folder again
            event = await next_event(watch, 10)
            assert (event.kind, event.key, event.value) == (EventKind.PUT, "f/c", b"f/c")
            await until(lambda: "exists again" in caplog.text, 10, "a log line saying the folder is back")

            # The new folder is watched with inotify again: a write shows up without a rescan.
            scans = store.scans
            await write_from_another_process(root, "put:f/d")
            event = await next_event(watch, 10)
            assert (event.kind, event.key) == (EventKind.PUT, "f/d")
            assert store.scans == scans


@linux_only
async def test_data_folder_moved_away_and_another_moved_in(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "kv"
    await store.put("m/old", b"old")
    other = make_plugin_manager().kv_store("file", root=str(tmp_path / "other"))
    await other.put("m/new", b"new")
    await other.close()
    with caplog.at_level(logging.WARNING, logger="dyntriton_kv_file"):
        async with store.watch("m/") as watch:
            os.rename(root / "data", tmp_path / "data.moved")
            event = await next_event(watch, 10)
            assert (event.kind, event.key) == (EventKind.DELETE, "m/old")
            os.rename(tmp_path / "other" / "data", root / "data")
            event = await next_event(watch, 10)
            assert (event.kind, event.key, event.value) == (EventKind.PUT, "m/new", b"new")
            await store.put("m/after", b"x")
            event = await next_event(watch, 10)
            assert (event.kind, event.key) == (EventKind.PUT, "m/after")
    assert "moved away" in caplog.text


async def test_poll_knob_forces_the_fallback_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dynamo_triton.cli.composition import plugin_settings
    from dynamo_triton.cli.main import core_command

    monkeypatch.setenv("DYN_FILE_KV_WATCH", "poll")
    plugins = make_plugin_manager()
    ctx = core_command("store", plugins).make_context("store", ["--file-kv-root", str(tmp_path / "kv"), "ls"])
    store = plugins.kv_store("file", plugin_settings(plugins, "kv-store", "file", ctx.params))
    assert isinstance(store, FileStore)
    assert store.watch_mode == "poll", "the CLI reads DYN_FILE_KV_WATCH into the file store's settings"
    try:
        with caplog.at_level(logging.INFO, logger="dyntriton_kv_file"):
            async with store.watch("k/") as first, store.watch("j/"):
                await write_from_another_process(tmp_path / "kv", "put:k/1")
                event = await next_event(first, 10)
                assert (event.kind, event.key) == (EventKind.PUT, "k/1")
                scans = store.scans
                await until(lambda: store.scans >= scans + 3, 10, "the polling fallback rescanning")
        assert caplog.text.count("poll the folder every 50 ms") == 1, caplog.text
    finally:
        await store.close()


async def test_auto_falls_back_to_polling_without_asyncinotify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "asyncinotify", None)  # as on a platform where it is not installed
    store = file_store(tmp_path / "kv")
    try:
        with caplog.at_level(logging.WARNING, logger="dyntriton_kv_file"):
            async with store.watch("k/") as watch:
                await write_from_another_process(tmp_path / "kv", "put:k/1")
                event = await next_event(watch, 10)
                assert (event.kind, event.key) == (EventKind.PUT, "k/1")
        assert "inotify is unavailable" in caplog.text and "asyncinotify" in caplog.text, caplog.text
    finally:
        await store.close()


def test_unknown_watch_mode_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected one of auto, poll"):
        make_plugin_manager().kv_store("file", root=str(tmp_path), watch="fanotify")


@linux_only
async def test_inotify_queue_overflow_is_recovered_by_a_rescan(
    store: FileStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "kv" / "data"
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    async with store.watch("w/") as watch:
        with caplog.at_level(logging.WARNING, logger="dyntriton_kv_file"):
            # Without yielding to the loop, make more events than the kernel queues, then one we care about.
            for i in range(limit + 100):
                (data / f"x%2F{i}").write_bytes(b'{"rev": 1, "lease": null}\n')
            (data / "w%2Fafter").write_bytes(b'{"rev": 2, "lease": null}\nlate')
            event = await next_event(watch, 30)
            assert (event.kind, event.key, event.value) == (EventKind.PUT, "w/after", b"late")
        assert "overflowed" in caplog.text
