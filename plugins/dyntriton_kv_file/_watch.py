"""The file store's watches: inotify on ``data/``, polling only where inotify is unavailable.

One watch is three parts:

- a *tracker* that knows the stamp (inode, size, mtime) of every key file it has reported and
  turns "these names may have changed" into PUT and DELETE events by re-reading those files;
- a *follower*: an inotify instance watching ``data/`` for ``MOVED_TO`` (every write is a
  rename of a temp file), ``CLOSE_WRITE``, ``DELETE`` and ``MOVED_FROM``, read by the event loop
  itself (no thread, no timer); or, in the fallback, a loop that rescans the folder every 50 ms;
- a *lease sweeper*: leases expire by wall-clock time, which makes no file event, so every
  watcher deletes expired leases' keys itself, waking at the earliest lease expiry and at least
  every :data:`SWEEP_INTERVAL` (a look at ``leases/``, never a scan of ``data/``).

Nothing is missed between the snapshot and the watch: the inotify watch is added *before*
the snapshot is read, and the tracker ignores events for files it already reported unchanged.
When ``data/`` is removed or moved away, the watch reports its keys deleted, says so in the
log, waits for the folder to exist again (checking every :data:`RECOVER_INTERVAL`), adds a new
inotify watch and rescans, so it never goes blind. An inotify queue overflow causes a rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from dynamo_triton.errors import StoreError
from dynamo_triton.kv import EventKind, WatchEvent
from dynamo_triton.watch import QueueWatch

if TYPE_CHECKING:
    from dyntriton_kv_file.store import FileStore, _Stamp

__all__ = ["POLL_INTERVAL", "RECOVER_INTERVAL", "SWEEP_INTERVAL", "open_watch"]

log = logging.getLogger("dyntriton_kv_file.store")

POLL_INTERVAL = 0.05  # the fallback's rescan period
SWEEP_INTERVAL = 0.5  # longest wait between two lease sweeps
RECOVER_INTERVAL = 0.5  # how often a watch whose folder is gone checks for it again
_SWEEP_SLACK = 0.01  # wake just after the earliest expiry, not just before it


async def open_watch(store: FileStore, prefix: str, watch: QueueWatch) -> None:
    """QueueWatch opener: take the snapshot of ``prefix`` and start feeding ``watch``."""
    await asyncio.to_thread(store._setup)
    follower: _Inotify | None = None
    if store.watch_mode == "poll":
        store._say_polling("watch=poll / DYN_FILE_KV_WATCH=poll")
    else:
        try:
            follower = _Inotify.open(store.data_folder)
        except _Unavailable as exc:
            store._say_polling(str(exc))
    tracker = _Tracker(store, watch, prefix)
    try:
        await asyncio.to_thread(store._sweep_leases)
        await tracker.take_snapshot()
    except BaseException:
        if follower is not None:
            follower.close()
        raise
    name = f"dyntriton-file-watch:{prefix}"
    feeder = _follow(tracker, follower) if follower is not None else _poll(tracker)
    watch.feed(_failing_as_store_error(store, watch, feeder), name=name)
    watch.feed(_failing_as_store_error(store, watch, _sweep(store)), name=f"{name}:lease-sweep")


async def _failing_as_store_error(store: FileStore, watch: QueueWatch, feeder: Coroutine[Any, Any, None]) -> None:
    """Run ``feeder``; an unexpected error ends the watch with a StoreError naming the folder."""
    try:
        await feeder
    except asyncio.CancelledError:
        raise
    except StoreError as exc:
        watch.fail(exc)
    except Exception as exc:
        watch.fail(StoreError(f"watching the file store {store.root} failed: {exc!r}", hint="open the watch again"))


class _Tracker:
    """What one watch has reported: the stamp of each key file under its prefix."""

    def __init__(self, store: FileStore, watch: QueueWatch, prefix: str):
        self.store, self.watch, self.prefix = store, watch, prefix
        self._encoded = quote(prefix, safe="")
        self._stamps: dict[str, _Stamp] = {}
        self._folder_present = True

    def wants(self, name: str) -> bool:
        """Whether a file called ``name`` in ``data/`` may hold a key under the prefix."""
        return not name.startswith(".") and name.startswith(self._encoded)

    async def take_snapshot(self) -> None:
        """List the prefix into the watch's snapshot and remember what it holds."""
        stamps = await asyncio.to_thread(self.store._scan, self.prefix)
        read = await asyncio.to_thread(lambda: [(name, *self.store._read_stamped(name)) for name in sorted(stamps)])
        entries = []
        for name, entry, stamp in read:
            if stamp is not None:
                self._stamps[name] = stamp
            if entry is not None and entry.key.startswith(self.prefix):
                entries.append(entry)
        self.watch.set_snapshot(entries)

    async def refresh(self, names: list[str]) -> None:
        """Re-read the files ``names`` (in order) and report those that changed since last reported."""
        read = await asyncio.to_thread(lambda: [(name, *self.store._read_stamped(name)) for name in names])
        for name, entry, stamp in read:
            self._report(name, entry, stamp)

    async def rescan(self) -> None:
        """Compare the whole folder with what was reported (after a poll tick, an overflow, a lost watch)."""
        current = await asyncio.to_thread(self.store._scan_folder, self.prefix)
        present = current is not None
        stamps = current or {}
        gone = sorted(self._stamps.keys() - stamps.keys())
        if not present and self._folder_present:
            log.warning(
                "file store folder %s was removed under a live watch on %r: reporting its %d key(s) deleted; "
                "the watch resumes when the folder exists again (the next write creates it)",
                self.store.data_folder,
                self.prefix,
                len(gone),
            )
        for name in gone:
            self._report(name, None, None)
        changed = sorted(name for name, stamp in stamps.items() if self._stamps.get(name) != stamp)
        if changed:
            await self.refresh(changed)
        if present and not self._folder_present:
            log.warning(
                "file store folder %s exists again: rescanned it for the watch on %r (%d key(s) present)",
                self.store.data_folder,
                self.prefix,
                len(self._stamps),
            )
        self._folder_present = present

    def _report(self, name: str, entry: Any, stamp: _Stamp | None) -> None:
        key = unquote(name)
        if stamp is None:
            if self._stamps.pop(name, None) is not None and key.startswith(self.prefix):
                self.watch.push(WatchEvent(EventKind.DELETE, key, None))
            return
        if self._stamps.get(name) == stamp:
            return  # already reported (an event queued before the snapshot, or a duplicate)
        self._stamps[name] = stamp
        if entry is not None and entry.key.startswith(self.prefix):  # None: corrupt or unreadable (warned)
            self.watch.push(WatchEvent(EventKind.PUT, entry.key, entry.value, entry.revision))


class _Unavailable(Exception):
    """inotify cannot be used here (the message says why and what to do)."""


class _Inotify:
    """An inotify instance and its watch on ``data/`` (asyncinotify, read by the event loop)."""

    def __init__(self, inotify: Any, mask: Any, mask_type: Any, folder: Path):
        self.inotify, self.mask, self.Mask, self.folder = inotify, mask, mask_type, folder
        self.watch: Any = None  # None while the folder is missing
        inotify.sync_timeout = 0  # sync_get() then drains what is already queued without blocking

    @classmethod
    def open(cls, folder: Path) -> _Inotify:
        """An inotify instance watching ``folder``; raises _Unavailable where inotify cannot be used."""
        try:
            from asyncinotify import Inotify, Mask
        except ImportError as exc:  # not Linux (the dependency is Linux-only), or not installed
            raise _Unavailable(f"asyncinotify cannot be imported: {exc}; pip install asyncinotify on Linux") from exc
        try:
            inotify = Inotify(cache_size=64)
        except (AttributeError, RuntimeError) as exc:  # asyncinotify found no inotify in libc
            raise _Unavailable(f"no inotify on this system ({exc})") from exc
        except OSError as exc:
            hint = " (raise the sysctl fs.inotify.max_user_instances)" if exc.errno == errno.EMFILE else ""
            raise _Unavailable(f"inotify_init failed: {exc.strerror}{hint}") from exc
        mask = (
            Mask.MOVED_TO | Mask.MOVED_FROM | Mask.CLOSE_WRITE | Mask.DELETE | Mask.DELETE_SELF | Mask.MOVE_SELF
        ) | Mask.ONLYDIR
        follower = cls(inotify, mask, Mask, folder)
        try:
            follower.add()  # a folder removed meanwhile is waited for like one removed later
        except BaseException:
            inotify.close()
            raise
        return follower

    def add(self) -> bool:
        """Watch the folder; False if it does not exist. Raises _Unavailable if inotify refuses."""
        try:
            self.watch = self.inotify.add_watch(self.folder, self.mask)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            hint = " (raise the sysctl fs.inotify.max_user_watches)" if exc.errno == errno.ENOSPC else ""
            raise _Unavailable(f"inotify_add_watch({self.folder}) failed: {exc.strerror}{hint}") from exc
        return True

    async def batch(self) -> list[Any]:
        """The next event and every event already queued behind it."""
        events = [await self.inotify.get()]
        while (event := self.inotify.sync_get()) is not None:
            events.append(event)
        return events

    def lost(self, event: Any) -> bool:
        """Whether ``event`` says our folder watch is gone (folder deleted, moved away, unmounted)."""
        lost_mask = self.Mask.DELETE_SELF | self.Mask.MOVE_SELF | self.Mask.IGNORED
        return self.watch is not None and bool(event.mask & lost_mask) and event.watch is self.watch

    def drop(self) -> None:
        """Forget the current folder watch (removing it from the kernel if it still exists)."""
        if self.watch is not None:
            with contextlib.suppress(OSError):  # EINVAL: the kernel already removed it (folder deleted)
                self.inotify.rm_watch(self.watch)
            self.watch = None

    def close(self) -> None:
        """Release the inotify file descriptor."""
        self.inotify.close()


async def _follow(tracker: _Tracker, follower: _Inotify) -> None:
    """Feed the watch from inotify events; on losing the folder, rescan and re-watch it when it is back."""
    overflow = follower.Mask.Q_OVERFLOW
    try:
        while True:
            if follower.watch is None:
                try:
                    found = follower.add()
                except _Unavailable as exc:
                    log.warning("file store %s: %s; this watch polls from now on", tracker.store.root, exc)
                    break
                await tracker.rescan()  # after add(): a change in between is both rescanned and queued
                if not found:
                    await asyncio.sleep(RECOVER_INTERVAL)
                continue
            events = await follower.batch()
            if any(follower.lost(event) for event in events):
                log.warning(
                    "file store folder %s was removed or moved away under a live watch on %r: "
                    "re-creating the inotify watch and rescanning",
                    follower.folder,
                    tracker.prefix,
                )
                follower.drop()
                continue
            if any(event.mask & overflow for event in events):
                log.warning(
                    "file store %s: the inotify queue overflowed (more changes at once than "
                    "fs.inotify.max_queued_events); rescanning",
                    tracker.store.root,
                )
                await tracker.rescan()
                continue
            names = dict.fromkeys(
                str(event.name)
                for event in events
                if event.name is not None and event.watch is follower.watch and tracker.wants(str(event.name))
            )
            if names:
                await tracker.refresh(list(names))
    finally:
        follower.close()
    await _poll(tracker)


async def _poll(tracker: _Tracker) -> None:
    """The fallback: rescan the folder every POLL_INTERVAL."""
    while True:
        await asyncio.sleep(POLL_INTERVAL)
        await tracker.rescan()


async def _sweep(store: FileStore) -> None:
    """End expired leases (their keys' deletions reach watchers as file events), forever."""
    while True:
        earliest = await asyncio.to_thread(store._sweep_leases)
        delay = SWEEP_INTERVAL
        if earliest is not None:
            delay = min(delay, max(earliest - time.time(), 0.0) + _SWEEP_SLACK)
        await asyncio.sleep(delay)
