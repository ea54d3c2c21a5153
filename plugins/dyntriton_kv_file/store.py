"""A KV store in a folder: one file per key, atomic renames, flock for the revision counter.

Layout under the root::

    data/<quoted key>     "<json header>\\n<value bytes>"; header {"rev": int, "lease": int | null}
    leases/<hex id>       {"ttl": float, "expires": unix time, "pid": int}
    revision              the last revision, updated under ``lock``
    lock                  flock'ed by every mutation

Values are written to a temp file, fsync'ed and renamed over the key's file, so
a reader never sees half a value. Leases expire by wall-clock time: any process
using the folder deletes the keys of an expired lease, so a lease whose owner
was killed with SIGKILL still ends. Watches follow ``data/`` with inotify (see
``_watch.py``), polling only where inotify is unavailable or ``watch="poll"``.
A folder removed while in use is created again by the next write.
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
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from urllib.parse import quote, unquote

from dynamo_triton.errors import ConfigError, LeaseExpiredError, StoreError
from dynamo_triton.kv import KVEntry
from dynamo_triton.watch import QueueWatch

__all__ = ["WATCH_MODES", "FileStore", "default_root"]

log = logging.getLogger(__name__)

WATCH_MODES = ("auto", "poll")
_Stamp = tuple[int, int, int]  # inode, size, mtime_ns
_UNREADABLE: _Stamp = (0, 0, 0)  # the file exists but could not be read (warned)


def default_root() -> Path:
    """The folder when none is given: a per-user one under the runtime or temp dir."""
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
    """KVStore over a folder (see the module docstring for the layout and guarantees).

    :param root: the folder; created on first write, and again if it is removed.
    :param watch: ``auto`` (inotify; polling every 50 ms where inotify is unavailable, said once
        in the log) or ``poll`` (always poll, e.g. on a network filesystem where inotify sees
        only this host's changes).

    ``scans`` and ``sweeps`` count full folder scans and lease sweeps done by this object:
    diagnostics that let tests prove an idle watch does not rescan on a timer.
    """

    name = "file"

    def __init__(self, root: str | os.PathLike[str], *, watch: str = "auto"):
        if watch not in WATCH_MODES:
            raise ConfigError(
                f"unknown watch mode {watch!r} for the file store; expected one of {', '.join(WATCH_MODES)}",
                hint="use auto (inotify, polling where unavailable) or poll (DYN_FILE_KV_WATCH)",
            )
        self.root = Path(root)
        self.watch_mode = watch
        self.scans = 0
        self.sweeps = 0
        self.data_folder = self.root / "data"
        self._data = self.data_folder
        self._leases = self.root / "leases"
        self._warned: dict[str, _Stamp] = {}
        self._said_polling = False

    # -- files -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Create the folders if missing (cheap when they exist, so a removed store comes back on write)."""
        try:
            self._data.mkdir(parents=True, exist_ok=True)
            self._leases.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot use {self.root} as the file store: {exc.strerror}",
                hint="point DYN_FILE_KV at a writable folder",
            ) from exc

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
        return self._read_stamped(name)[0]

    def _read_stamped(self, name: str) -> tuple[KVEntry | None, _Stamp | None]:
        """The entry in data/<name> and the stamp of the very file read (None, None if absent).

        A file that exists but is corrupt or unreadable gives (None, stamp), with a warning.
        """
        path = self._data / name
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                raw = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as exc:
            self._warn(name, f"cannot read {path}: {exc.strerror}")
            return None, _UNREADABLE
        return self._parse(name, raw), (st.st_ino, st.st_size, st.st_mtime_ns)

    def _parse(self, name: str, raw: bytes) -> KVEntry | None:
        path = self._data / name
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
        """Stamp of every key file whose name could hold a key under ``prefix`` ({} if the folder is gone)."""
        return self._scan_folder(prefix) or {}

    def _scan_folder(self, prefix: str) -> dict[str, _Stamp] | None:
        """Like :meth:`_scan`, but None when ``data/`` does not exist (watches report that)."""
        self.scans += 1
        encoded = quote(prefix, safe="")
        stamps: dict[str, _Stamp] = {}
        try:
            with os.scandir(self._data) as it:
                for item in it:
                    if item.name.startswith(".") or not item.name.startswith(encoded):
                        continue
                    try:
                        st = item.stat()
                    except FileNotFoundError:
                        continue
                    stamps[item.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(
                f"cannot list {self._data}: {exc.strerror}", hint="point DYN_FILE_KV at a readable folder"
            ) from exc
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

    def _sweep_leases(self) -> float | None:
        """Delete expired lease files and their keys (any process may do it).

        Returns the earliest expiry (unix time) among the leases still alive, None if there are none.
        """
        self.sweeps += 1
        now = time.time()
        expired: set[int] = set()
        earliest: float | None = None
        try:
            paths = list(self._leases.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return None
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                info = json.loads(path.read_text())
                expires = float(info["expires"])
                if expires > now:
                    earliest = expires if earliest is None else min(earliest, expires)
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
        return earliest

    def _delete_where(self, predicate: Callable[[KVEntry], bool]) -> None:
        with self._locked():
            for name in list(self._scan("")):
                entry = self._read_entry(name)
                if entry is not None and predicate(entry):
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
        from dyntriton_kv_file._watch import open_watch

        return QueueWatch(partial(open_watch, self, prefix))

    def _say_polling(self, reason: str) -> None:
        """Log once per store that its watches poll, and why."""
        if self._said_polling:
            return
        self._said_polling = True
        if self.watch_mode == "poll":
            log.info("file store %s: watches poll the folder every 50 ms (%s)", self.root, reason)
        else:
            log.warning(
                "file store %s: inotify is unavailable (%s); watches poll the folder every 50 ms instead",
                self.root,
                reason,
            )

    async def grant_lease(self, ttl: float) -> int:
        return await asyncio.to_thread(self._grant, ttl)

    async def keep_alive(self, lease: int) -> None:
        await asyncio.to_thread(self._keep_alive, lease)

    async def revoke_lease(self, lease: int) -> None:
        await asyncio.to_thread(self._revoke, lease)

    async def close(self) -> None:
        return None
