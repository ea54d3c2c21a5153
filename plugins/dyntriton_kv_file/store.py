"""A KV store in a folder: one file per key, atomic renames, flock for the revision counter.

Layout under the root::

    data/<quoted key>     "<json header>\\n<value bytes>"; header {"rev": int, "lease": int | null}
    leases/<hex id>       {"ttl": float, "expires": unix time, "pid": int}
    revision              the last revision, updated under ``lock``
    lock                  flock'ed by every mutation

Values are written to a temp file, fsync'ed and renamed over the key's file, so
a reader never sees half a value. Leases expire by wall-clock time: any process
using the folder deletes the keys of an expired lease, so a lease whose owner
was killed with SIGKILL still ends. Watches poll the folder every 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

from dynamo_triton.errors import ConfigError, LeaseExpiredError, StoreError
from dynamo_triton.kv import EventKind, KVEntry, WatchEvent
from dynamo_triton.watch import QueueWatch

__all__ = ["FileStore", "default_root"]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05
_Stamp = tuple[int, int, int]  # inode, size, mtime_ns


def default_root() -> Path:
    """``DYN_FILE_KV`` if set, else a per-user folder under the runtime or temp dir."""
    configured = os.environ.get("DYN_FILE_KV")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"dyntriton-kv-{os.getuid()}"


def _encode_key(key: str) -> str:
    if not key:
        raise ConfigError("KV keys must not be empty")
    name = quote(key, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > 240:
        raise ConfigError(f"key too long for the file store ({len(name)} bytes once encoded, max 240): {key[:60]}...")
    return name


class FileStore:
    """KVStore over a folder (see the module docstring for the layout and guarantees)."""

    name = "file"

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._data = self.root / "data"
        self._leases = self.root / "leases"
        self._ready = False
        self._warned: dict[str, _Stamp] = {}

    # -- files -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._ready:
            return
        try:
            self._data.mkdir(parents=True, exist_ok=True)
            self._leases.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot use {self.root} as the file store: {exc.strerror}",
                hint="point DYN_FILE_KV at a writable folder",
            ) from exc
        self._ready = True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._setup()
        with open(self.root / "lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _next_revision(self) -> int:
        path = self.root / "revision"
        try:
            current = int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            current = 0
        self._write_atomic(path, str(current + 1).encode())
        return current + 1

    def _write_atomic(self, path: Path, payload: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _read_entry(self, name: str) -> KVEntry | None:
        """The entry in data/<name>, None if absent; corrupt files are skipped with a warning."""
        path = self._data / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(name, f"cannot read {path}: {exc.strerror}")
            return None
        header, sep, value = raw.partition(b"\n")
        try:
            meta = json.loads(header) if sep else None
            if not isinstance(meta, dict):
                raise ValueError("no header")
            lease = meta.get("lease")
            return KVEntry(unquote(name), value, int(meta["rev"]), int(lease) if lease is not None else None)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self._warn(name, f"skipping corrupt entry {path} (not written by dyntriton?)")
            return None

    def _warn(self, name: str, message: str) -> None:
        try:
            st = (self._data / name).stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (0, 0, 0)
        if self._warned.get(name) != stamp:
            self._warned[name] = stamp
            log.warning("%s", message)

    def _scan(self, prefix: str) -> dict[str, _Stamp]:
        self._setup()
        encoded = quote(prefix, safe="")
        stamps: dict[str, _Stamp] = {}
        with os.scandir(self._data) as it:
            for item in it:
                if item.name.startswith(".") or not item.name.startswith(encoded):
                    continue
                try:
                    st = item.stat()
                except FileNotFoundError:
                    continue
                stamps[item.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return stamps

    # -- leases ----------------------------------------------------------------------------------
    def _lease_path(self, lease: int) -> Path:
        return self._leases / f"{lease:x}"

    def _lease_alive(self, lease: int) -> bool:
        try:
            info = json.loads(self._lease_path(lease).read_text())
            return float(info["expires"]) > time.time()
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return False

    def _sweep_leases(self) -> None:
        """Delete expired lease files and their keys (any process may do it)."""
        self._setup()
        now = time.time()
        expired: set[int] = set()
        for path in self._leases.iterdir():
            if path.name.startswith("."):
                continue
            try:
                info = json.loads(path.read_text())
                if float(info["expires"]) > now:
                    continue
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                log.warning("removing corrupt lease file %s", path)
            with contextlib.suppress(ValueError):
                expired.add(int(path.name, 16))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if expired:
            self._delete_where(lambda entry: entry.lease in expired)

    def _delete_where(self, predicate: object) -> None:
        with self._locked():
            for name in list(self._scan("")):
                entry = self._read_entry(name)
                if entry is not None and predicate(entry):  # type: ignore[operator]
                    with contextlib.suppress(FileNotFoundError):
                        (self._data / name).unlink()
                        self._next_revision()

    # -- blocking implementations (run in a thread) ----------------------------------------------
    def _put(self, key: str, value: bytes, lease: int | None, only_if_absent: bool) -> int | None:
        name = _encode_key(key)
        with self._locked():
            if lease is not None and not self._lease_alive(lease):
                raise LeaseExpiredError(f"lease {lease:x} does not exist (expired or revoked)")
            if only_if_absent and (self._data / name).exists():
                return None
            revision = self._next_revision()
            header = json.dumps({"rev": revision, "lease": lease}).encode()
            self._write_atomic(self._data / name, header + b"\n" + bytes(value))
            return revision

    def _delete(self, key: str) -> bool:
        name = _encode_key(key)
        with self._locked():
            try:
                (self._data / name).unlink()
            except FileNotFoundError:
                return False
            self._next_revision()
            return True

    def _list(self, prefix: str) -> list[KVEntry]:
        entries = (self._read_entry(name) for name in sorted(self._scan(prefix)))
        return [entry for entry in entries if entry is not None and entry.key.startswith(prefix)]

    def _grant(self, ttl: float) -> int:
        self._setup()
        lease = secrets.randbits(62) | 1
        info = {"ttl": ttl, "expires": time.time() + ttl, "pid": os.getpid()}
        self._write_atomic(self._lease_path(lease), json.dumps(info).encode())
        return lease

    def _keep_alive(self, lease: int) -> None:
        path = self._lease_path(lease)
        with self._locked():
            try:
                info = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                raise LeaseExpiredError(f"lease {lease:x} does not exist (expired or revoked)") from None
            if float(info["expires"]) <= time.time():
                raise LeaseExpiredError(f"lease {lease:x} expired {time.time() - float(info['expires']):.1f} s ago")
            info["expires"] = time.time() + float(info["ttl"])
            self._write_atomic(path, json.dumps(info).encode())

    def _revoke(self, lease: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._lease_path(lease).unlink()
        self._delete_where(lambda entry: entry.lease == lease)

    # -- KVStore ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KVEntry | None:
        await asyncio.to_thread(self._sweep_leases)
        return await asyncio.to_thread(self._read_entry, _encode_key(key))

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        revision = await asyncio.to_thread(self._put, key, value, lease, False)
        assert revision is not None
        return revision

    async def create(self, key: str, value: bytes, *, lease: int | None = None) -> bool:
        await asyncio.to_thread(self._sweep_leases)
        return await asyncio.to_thread(self._put, key, value, lease, True) is not None

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, key)

    async def list(self, prefix: str) -> list[KVEntry]:
        await asyncio.to_thread(self._sweep_leases)
        return await asyncio.to_thread(self._list, prefix)

    def watch(self, prefix: str) -> QueueWatch:

        async def opener(watch: QueueWatch) -> None:
            await asyncio.to_thread(self._sweep_leases)
            stamps = await asyncio.to_thread(self._scan, prefix)
            entries = await asyncio.to_thread(lambda: {n: self._read_entry(n) for n in stamps})
            watch.set_snapshot([e for e in entries.values() if e is not None and e.key.startswith(prefix)])
            watch.feed(self._poll(watch, prefix, stamps), name=f"dyntriton-file-watch:{prefix}")

        return QueueWatch(opener)

    async def _poll(self, watch: QueueWatch, prefix: str, stamps: dict[str, _Stamp]) -> None:
        last_sweep = 0.0
        try:
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                if time.monotonic() - last_sweep > 0.25:
                    await asyncio.to_thread(self._sweep_leases)
                    last_sweep = time.monotonic()
                current = await asyncio.to_thread(self._scan, prefix)
                for name in sorted(stamps.keys() - current.keys()):
                    key = unquote(name)
                    if key.startswith(prefix):
                        watch.push(WatchEvent(EventKind.DELETE, key, None))
                changed = [name for name, stamp in current.items() if stamps.get(name) != stamp]
                for name in sorted(changed):
                    entry = await asyncio.to_thread(self._read_entry, name)
                    if entry is None:  # vanished meanwhile (next poll reports it) or corrupt (warned)
                        continue
                    if entry.key.startswith(prefix):
                        watch.push(WatchEvent(EventKind.PUT, entry.key, entry.value, entry.revision))
                stamps = current
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            watch.fail(StoreError(f"watching {self.root} failed: {exc}"))

    async def grant_lease(self, ttl: float) -> int:
        return await asyncio.to_thread(self._grant, ttl)

    async def keep_alive(self, lease: int) -> None:
        await asyncio.to_thread(self._keep_alive, lease)

    async def revoke_lease(self, lease: int) -> None:
        await asyncio.to_thread(self._revoke, lease)

    async def close(self) -> None:
        return None
