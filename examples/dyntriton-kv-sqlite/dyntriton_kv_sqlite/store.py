"""A KVStore (dynamo_triton.kv) in one SQLite file: keys, leases, and a change log watches read.

Every write runs in an IMMEDIATE transaction that bumps the revision and appends to
the change log, so a watch that starts from the snapshot's revision and reads the
log after it misses nothing. Leases expire by wall-clock time; whichever process
touches the store next deletes the expired leases' keys (logged as deletes).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator

from dynamo_triton.errors import LeaseExpiredError, StoreError
from dynamo_triton.kv import EventKind, KVEntry, WatchEvent
from dynamo_triton.watch import QueueWatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, revision INTEGER NOT NULL, lease INTEGER);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES (0, 0);
CREATE TABLE IF NOT EXISTS log (revision INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB,
                                at REAL NOT NULL);
"""
POLL_INTERVAL = 0.05
LOG_RETENTION = 300.0


class SqliteStore:
    """KVStore over a SQLite file (WAL mode; safe for several processes on one host)."""

    name = "sqlite"

    def __init__(self, path: str):
        self.path = path
        self._ready = False

    @contextlib.contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the sqlite store {self.path}: {exc}") from exc
        try:
            if not self._ready:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                self._ready = True
            if write:
                db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                if write:
                    db.execute("COMMIT")
            except BaseException:
                if write:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    @staticmethod
    def _revision(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT revision FROM meta WHERE id = 0").fetchone()[0])

    def _log(self, db: sqlite3.Connection, kind: EventKind, key: str, value: bytes | None) -> int:
        revision = self._revision(db) + 1
        db.execute("UPDATE meta SET revision = ? WHERE id = 0", (revision,))
        db.execute("INSERT INTO log VALUES (?, ?, ?, ?, ?)", (revision, kind.value, key, value, time.time()))
        return revision

    def _expire(self, db: sqlite3.Connection) -> None:
        now = time.time()
        expired = [row[0] for row in db.execute("SELECT id FROM leases WHERE expires <= ?", (now,))]
        for lease in expired:
            self._drop_lease(db, lease)
        db.execute("DELETE FROM log WHERE at < ?", (now - LOG_RETENTION,))

    def _drop_lease(self, db: sqlite3.Connection, lease: int) -> None:
        for (key,) in db.execute("SELECT key FROM kv WHERE lease = ?", (lease,)).fetchall():
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._log(db, EventKind.DELETE, key, None)
        db.execute("DELETE FROM leases WHERE id = ?", (lease,))

    # -- blocking operations ---------------------------------------------------------------------
    def _put(self, key: str, value: bytes, lease: int | None, only_if_absent: bool) -> int | None:
        with self._db(write=True) as db:
            self._expire(db)
            if lease is not None and db.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
                raise LeaseExpiredError(f"sqlite lease {lease} does not exist (expired or revoked)")
            if only_if_absent and db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone():
                return None
            revision = self._log(db, EventKind.PUT, key, bytes(value))
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?)", (key, bytes(value), revision, lease))
            return revision

    def _delete(self, key: str) -> bool:
        with self._db(write=True) as db:
            if db.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount == 0:
                return False
            self._log(db, EventKind.DELETE, key, None)
            return True

    def _list(self, prefix: str) -> tuple[list[KVEntry], int]:
        with self._db(write=True) as db:
            self._expire(db)
            rows = db.execute(
                "SELECT key, value, revision, lease FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
            return [KVEntry(k, bytes(v), r, lease) for k, v, r, lease in rows], self._revision(db)

    def _events_after(self, revision: int, prefix: str) -> tuple[list[WatchEvent], int]:
        """Changes under ``prefix`` after ``revision``, and the revision they bring the watch to."""
        with self._db(write=True) as db:
            self._expire(db)
            rows = db.execute(
                "SELECT revision, kind, key, value FROM log WHERE revision > ? ORDER BY revision", (revision,)
            ).fetchall()
            latest = self._revision(db)
        events = [
            WatchEvent(EventKind(kind), key, None if value is None else bytes(value), rev)
            for rev, kind, key, value in rows
            if key.startswith(prefix)
        ]
        return events, latest

    def _grant(self, ttl: float) -> int:
        with self._db(write=True) as db:
            cursor = db.execute("INSERT INTO leases (ttl, expires) VALUES (?, ?)", (ttl, time.time() + ttl))
            return int(cursor.lastrowid or 0)

    def _keep_alive(self, lease: int) -> None:
        with self._db(write=True) as db:
            self._expire(db)
            if db.execute("UPDATE leases SET expires = ? + ttl WHERE id = ?", (time.time(), lease)).rowcount == 0:
                raise LeaseExpiredError(f"sqlite lease {lease} does not exist (expired or revoked)")

    def _revoke(self, lease: int) -> None:
        with self._db(write=True) as db:
            self._drop_lease(db, lease)

    # -- KVStore ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KVEntry | None:
        entries, _ = await asyncio.to_thread(self._list, key)
        return next((entry for entry in entries if entry.key == key), None)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        revision = await asyncio.to_thread(self._put, key, value, lease, False)
        assert revision is not None
        return revision

    async def create(self, key: str, value: bytes, *, lease: int | None = None) -> bool:
        return await asyncio.to_thread(self._put, key, value, lease, True) is not None

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, key)

    async def list(self, prefix: str) -> list[KVEntry]:
        entries, _ = await asyncio.to_thread(self._list, prefix)
        return entries

    def watch(self, prefix: str) -> QueueWatch:

        async def opener(watch: QueueWatch) -> None:
            entries, revision = await asyncio.to_thread(self._list, prefix)
            watch.set_snapshot(entries)
            watch.feed(self._poll(watch, prefix, revision))

        return QueueWatch(opener)

    async def _poll(self, watch: QueueWatch, prefix: str, revision: int) -> None:
        try:
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                events, revision = await asyncio.to_thread(self._events_after, revision, prefix)
                for event in events:
                    watch.push(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            watch.fail(StoreError(f"watching {self.path} failed: {exc}"))

    async def grant_lease(self, ttl: float) -> int:
        return await asyncio.to_thread(self._grant, ttl)

    async def keep_alive(self, lease: int) -> None:
        await asyncio.to_thread(self._keep_alive, lease)

    async def revoke_lease(self, lease: int) -> None:
        await asyncio.to_thread(self._revoke, lease)

    async def close(self) -> None:
        return None
