"""KVStore on a NATS JetStream key-value bucket (nats-py).

The bucket (``dyntriton`` unless ``--nats-kv-bucket`` / ``DYN_NATS_KV_BUCKET`` says otherwise)
is an ordinary JetStream KV bucket with history 1, created on first use: ``nats kv ls dyntriton``
shows its keys (see :mod:`dyntriton_kv_nats.keys` for how they are spelled). Revisions are the
bucket stream's sequence numbers. Leases are described in :mod:`dyntriton_kv_nats.leases`.
Every call is bounded by ``timeout``: an unreachable NATS raises StoreUnavailableError naming
the servers, a server without JetStream says to start it with ``-js``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dyntriton_transport_nats.connection import NatsSettings, connect, start_hint

from dynamo_triton.errors import ConfigError, LeaseExpiredError, StoreError, StoreUnavailableError
from dynamo_triton.kv import EventKind, KVEntry, WatchEvent
from dynamo_triton.plugins import import_optional
from dynamo_triton.watch import QueueWatch
from dyntriton_kv_nats.follow import LEASE_HEADER, Follower, Record, record_of
from dyntriton_kv_nats.keys import decode_key, encode_key, lease_key, prefix_filter
from dyntriton_kv_nats.leases import LeaseSweeper, lease_value

__all__ = ["NatsKVSettings", "NatsStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_BUCKET = re.compile(r"[A-Za-z0-9_-]+")
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(frozen=True)
class NatsKVSettings:
    """Where the store lives: the NATS connection and the bucket.

    :param bucket: JetStream KV bucket name (letters, digits, ``-``, ``_``).
    :param storage: ``file`` (survives a nats-server restart) or ``memory``.
    :param replicas: bucket replicas in a JetStream cluster (1 on a single server).
    """

    nats: NatsSettings = field(default_factory=NatsSettings)
    bucket: str = "dyntriton"
    storage: str = "file"
    replicas: int = 1

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NatsKVSettings:
        """Settings from ``options``: ``servers``, the TLS and credential options of NatsSettings,
        ``bucket``, ``storage``, ``replicas`` (see :class:`~dyntriton_kv_nats.options.NatsKVOptions`)."""
        bucket = str(options.get("bucket") or "dyntriton")
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"bad NATS KV bucket name {bucket!r}; use letters, digits, - and _")
        storage = str(options.get("storage") or "file")
        if storage not in ("file", "memory"):
            raise ConfigError(f"bad NATS KV storage {storage!r}; expected 'file' or 'memory'")
        return cls(
            nats=NatsSettings.from_options(options),
            bucket=bucket,
            storage=storage,
            replicas=int(options.get("replicas") or 1),
        )


class NatsStore:
    """KVStore on JetStream KV; connects on first use and sweeps expired leases while connected.

    :param sweep: run a :class:`~dyntriton_kv_nats.leases.LeaseSweeper` (every store should,
        so leases expire while any dyntriton process is up).
    """

    name = "nats"

    def __init__(self, settings: NatsKVSettings, *, sweep: bool = True):
        self.settings, self.sweep = settings, sweep
        self._nats = import_optional("nats", extra="nats", purpose="the nats KV store")
        self._nc: Any = None
        self._js: Any = None
        self._sweeper: LeaseSweeper | None = None
        self._lock = asyncio.Lock()
        self.stream = f"KV_{settings.bucket}"
        self.prefix = f"$KV.{settings.bucket}."
        self._direct = False

    # -- connection ------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"bucket {self.settings.bucket!r} on NATS at {self.settings.nats.describe()}"

    async def _ready(self) -> Any:
        if self._js is not None:
            return self._js
        async with self._lock:
            if self._js is None:
                nc = await connect(
                    self.settings.nats, name="dyntriton kv", purpose="the nats KV store", error=StoreUnavailableError
                )
                try:
                    js = nc.jetstream(timeout=self.settings.nats.timeout)
                    await self._call(self._bucket(js))
                    if self.sweep:
                        sweeper = LeaseSweeper(js, self.stream, self.prefix, self._delete_if)
                        await self._call(sweeper.start(self.settings.nats.timeout))
                        self._sweeper = sweeper
                except BaseException:
                    await nc.close()
                    raise
                self._nc, self._js = nc, js
        return self._js

    async def _bucket(self, js: Any) -> None:
        errors = self._nats.js.errors
        try:
            kv = await js.key_value(self.settings.bucket)
        except errors.BucketNotFoundError:
            from nats.js.api import KeyValueConfig, StorageType

            storage = StorageType.FILE if self.settings.storage == "file" else StorageType.MEMORY
            config = KeyValueConfig(
                bucket=self.settings.bucket, history=1, storage=storage, replicas=self.settings.replicas
            )
            kv = await js.create_key_value(config)
            log.info("created NATS KV %s", self._where())
        self._direct = bool(kv._direct)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Await a NATS call within the store's bound, mapping failures to our errors."""
        nats = self._nats
        try:
            async with asyncio.timeout(self.settings.nats.timeout):
                return await awaitable
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"NATS KV {self._where()} did not answer within {self.settings.nats.timeout:g} s",
                hint=start_hint(self.settings.nats),
            ) from exc
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            raise StoreUnavailableError(
                f"NATS at {self.settings.nats.describe()} has no JetStream (no responders for the KV API)",
                hint="start nats-server with JetStream: `nats-server -js -sd DIR` (or jetstream enabled in its config)",
            ) from exc
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            raise StoreUnavailableError(
                f"lost the connection to NATS for {self._where()}", hint=start_hint(self.settings.nats)
            ) from exc
        except nats.errors.MaxPayloadError as exc:
            raise StoreError(
                f"value too large for NATS KV {self._where()} (larger than the server's max_payload)",
                status="RESOURCE_EXHAUSTED",
                hint="keep store values small, or raise max_payload in nats-server's configuration",
            ) from exc
        except nats.js.errors.APIError as exc:
            raise StoreError(f"NATS KV {self._where()} failed: {exc}") from exc

    # -- primitives ------------------------------------------------------------------------------
    async def _record(self, bucket_key: str) -> Record | None:
        js = await self._ready()
        try:
            msg = await self._call(js.get_msg(self.stream, subject=self.prefix + bucket_key, direct=self._direct))
        except StoreError as exc:
            if isinstance(exc.__cause__, self._nats.js.errors.NotFoundError):
                return None
            raise
        record = record_of(bucket_key, msg.data, int(msg.seq), msg.headers)
        return None if record.deleted else record

    async def _publish(self, bucket_key: str, value: bytes, headers: dict[str, str] | None = None) -> int | None:
        """Publish to ``bucket_key``; its stream revision, or None when an expected-last check failed."""
        js = await self._ready()
        try:
            ack = await self._call(js.publish(self.prefix + bucket_key, value, headers=headers or None))
        except StoreError as exc:
            cause = exc.__cause__
            if getattr(cause, "err_code", None) in _WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    async def _delete_if(self, bucket_key: str, revision: int) -> bool:
        headers = {"KV-Operation": "DEL", _EXPECTED_LAST: str(revision)}
        return await self._publish(bucket_key, b"", headers) is not None

    async def _lease_alive(self, lease: int) -> Record:
        record = await self._record(lease_key(lease))
        if record is None:
            raise LeaseExpiredError(
                f"NATS KV lease {lease:x} does not exist (expired or revoked)",
                hint="grant a new lease and put the keys again",
            )
        return record

    def _entry(self, record: Record) -> KVEntry:
        return KVEntry(decode_key(record.key), record.value, record.revision, record.lease)

    # -- KVStore ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KVEntry | None:
        record = await self._record(encode_key(key))
        return None if record is None else self._entry(record)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        headers = None
        if lease:
            await self._lease_alive(lease)
            headers = {LEASE_HEADER: f"{lease:x}"}
        revision = await self._publish(encode_key(key), bytes(value), headers)
        assert revision is not None  # no expectation was set
        return revision

    async def create(self, key: str, value: bytes, *, lease: int | None = None) -> bool:
        bucket_key = encode_key(key)
        headers = {_EXPECTED_LAST: "0"}
        if lease:
            await self._lease_alive(lease)
            headers[LEASE_HEADER] = f"{lease:x}"
        for _ in range(5):
            if await self._publish(bucket_key, bytes(value), headers) is not None:
                return True
            js = await self._ready()
            try:  # the key's last message may be a delete marker: absent, so expect that one
                msg = await self._call(js.get_msg(self.stream, subject=self.prefix + bucket_key, direct=self._direct))
            except StoreError:
                continue
            last = record_of(bucket_key, msg.data, int(msg.seq), msg.headers)
            if not last.deleted:
                return False
            headers[_EXPECTED_LAST] = str(last.revision)
        raise StoreError(f"create of {key!r} in NATS KV {self._where()} kept racing with other writers")

    async def delete(self, key: str) -> bool:
        bucket_key = encode_key(key)
        for _ in range(5):
            record = await self._record(bucket_key)
            if record is None:
                return False
            if await self._delete_if(bucket_key, record.revision):
                return True
        raise StoreError(f"delete of {key!r} in NATS KV {self._where()} kept racing with other writers")

    async def _scan(self, subject: str) -> list[Record]:
        """The latest non-deleted record of every bucket key matching ``subject``."""
        js = await self._ready()
        latest: dict[str, Record] = {}

        def keep(record: Record, initial: bool) -> None:
            if initial:
                latest[record.key] = record

        follower = Follower(js, self.stream, self.prefix, self.prefix + subject, keep)
        await self._call(follower.start(self.settings.nats.timeout))
        await follower.stop()
        return [record for record in latest.values() if not record.deleted]

    async def list(self, prefix: str) -> list[KVEntry]:
        subject, _ = prefix_filter(prefix)
        entries = [self._entry(record) for record in await self._scan(subject)]
        return sorted((entry for entry in entries if entry.key.startswith(prefix)), key=lambda entry: entry.key)

    def watch(self, prefix: str) -> QueueWatch:
        subject, _ = prefix_filter(prefix)
        followers: list[Follower] = []

        async def opener(watch: QueueWatch) -> None:
            js = await self._ready()
            snapshot: dict[str, Record] = {}

            def deliver(record: Record, initial: bool) -> None:
                key = decode_key(record.key)
                if not key.startswith(prefix):
                    return
                if initial:
                    snapshot[record.key] = record
                elif record.deleted:
                    watch.push(WatchEvent(EventKind.DELETE, key, None, record.revision))
                else:
                    watch.push(WatchEvent(EventKind.PUT, key, record.value, record.revision))

            follower = Follower(js, self.stream, self.prefix, self.prefix + subject, deliver)
            await self._call(follower.start(self.settings.nats.timeout))
            followers.append(follower)
            watch.set_snapshot([self._entry(record) for record in snapshot.values() if not record.deleted])

        async def closer(watch: QueueWatch) -> None:
            for follower in followers:
                await follower.stop()

        return QueueWatch(opener, closer)

    async def grant_lease(self, ttl: float) -> int:
        if ttl <= 0:
            raise ConfigError(f"lease ttl must be positive, got {ttl}")
        for _ in range(5):
            lease = secrets.randbits(62) + 1
            if await self._publish(lease_key(lease), lease_value(ttl), {_EXPECTED_LAST: "0"}) is not None:
                return lease
        raise StoreError(f"could not create a unique lease record in NATS KV {self._where()}")

    async def keep_alive(self, lease: int) -> None:
        for _ in range(5):
            record = await self._lease_alive(lease)
            if await self._publish(record.key, record.value, {_EXPECTED_LAST: str(record.revision)}) is not None:
                return
        raise StoreError(f"keep-alive of NATS KV lease {lease:x} kept racing with other writers")

    async def revoke_lease(self, lease: int) -> None:
        bucket_key = lease_key(lease)
        for _ in range(5):
            record = await self._record(bucket_key)
            if record is None:
                return
            if await self._delete_if(bucket_key, record.revision):
                break
        for member in await self._scan("k.>"):
            if member.lease == lease:
                await self._delete_if(member.key, member.revision)

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await sweeper.stop()
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # already broken: nothing left to release
                log.debug("closing the NATS connection: %s", exc)
