"""KVStore over etcd v3 with etcd3aio.

Endpoints come from ``--etcd-endpoints`` / ``ETCD_ENDPOINTS`` (comma-separated, default
``http://localhost:2379``). ``https://`` endpoints or a CA file turn TLS on;
a client certificate and key enable mutual TLS; a user and password enable
etcd authentication (the token is refreshed in the background). Every call
is bounded: an unreachable etcd raises StoreUnavailableError naming the
endpoints within ``timeout`` seconds.

A watch ends with a StoreError that says why, and the watcher re-lists, when
it cannot be trusted to continue: etcd compacted the history past our revision,
or the watch stream had to be re-established (etcd restarted, or was unreachable
for a while). etcd3aio would resume such a stream from the last revision seen,
which is exact only if etcd kept its data: a wiped etcd, one restarted without
its data or restored from an older backup starts again from a lower revision,
and a watch resumed at the old one waits silently for revisions the new store
may reach only later (or has already passed with other keys). A revision lower
than ours is named in the error; either way the watcher re-lists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dynamo_triton.errors import ConfigError, LeaseExpiredError, StoreError, StoreUnavailableError
from dynamo_triton.kv import EventKind, KVEntry, WatchEvent
from dynamo_triton.plugins import import_optional
from dynamo_triton.watch import QueueWatch
from dyntriton_kv_etcd.options import DEFAULT_ENDPOINTS

__all__ = ["EtcdSettings", "EtcdStore"]


@dataclass(frozen=True)
class EtcdSettings:
    """Connection settings; see :meth:`from_options` for where each comes from."""

    endpoints: tuple[str, ...]
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = 5.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EtcdSettings:
        """Settings from ``options`` (the fields of :class:`~dyntriton_kv_etcd.options.EtcdOptions`)."""
        raw = options.get("endpoints") or DEFAULT_ENDPOINTS
        urls = [part.strip() for part in str(raw).split(",") if part.strip()]
        tls = any(url.startswith("https://") for url in urls)
        hosts = tuple(url.split("://", 1)[-1].rstrip("/") for url in urls)
        ca_file = options.get("ca_file")
        return cls(
            endpoints=hosts,
            tls=tls or bool(ca_file),
            ca_file=ca_file,
            cert_file=options.get("cert_file"),
            key_file=options.get("key_file"),
            user=options.get("user"),
            password=options.get("password"),
            timeout=float(options.get("timeout") or 5.0),
        )

    def describe(self) -> str:
        scheme = "https" if self.tls else "http"
        return ", ".join(f"{scheme}://{host}" for host in self.endpoints)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the etcd {what} file {path}: {exc.strerror}") from exc


class EtcdStore:
    """KVStore on etcd; connects on first use."""

    name = "etcd"

    def __init__(self, settings: EtcdSettings):
        self.settings = settings
        self._etcd = import_optional("etcd3aio", extra="etcd", purpose="the etcd KV store")
        self._client: Any = None
        self._refresher: Any = None
        self._lock = asyncio.Lock()

    # -- connection ------------------------------------------------------------------------------
    async def _connected(self) -> Any:
        async with self._lock:
            if self._client is None:
                s = self.settings
                if (s.cert_file or s.key_file) and not s.tls:
                    raise ConfigError("an etcd client certificate needs TLS: give a CA file or https:// endpoints")
                tls_args: dict[str, bytes | None] = {}
                if s.tls:
                    tls_args = {
                        "ca_cert": _read(s.ca_file, "CA") or _default_ca(),
                        "cert_key": _read(s.key_file, "client key"),
                        "cert_chain": _read(s.cert_file, "client certificate"),
                    }
                client = self._etcd.Etcd3Client(
                    list(s.endpoints),
                    rpc_max_attempts=2,
                    tls_server_name=s.endpoints[0].rsplit(":", 1)[0] if s.tls and len(s.endpoints) > 1 else None,
                    **tls_args,
                )
                await client.connect()
                self._client = client
                if s.user:
                    refresher = client.token_refresher(s.user, s.password or "")
                    try:
                        await self._call(refresher.__aenter__())
                    except BaseException:
                        await client.close()
                        self._client = None
                        raise
                    self._refresher = refresher
            return self._client

    async def _call(self, awaitable: Any) -> Any:
        """Await an etcd call with the store's bound, mapping failures to our errors."""
        errors = self._etcd
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await awaitable
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"etcd at {self.settings.describe()} did not answer within {self.settings.timeout:g} s",
                hint="check ETCD_ENDPOINTS and that etcd is running (`etcdctl endpoint health`)",
            ) from exc
        except errors.EtcdConnectionError as exc:
            raise StoreUnavailableError(
                f"cannot reach etcd at {self.settings.describe()}: {exc}",
                hint="check ETCD_ENDPOINTS and that etcd is running (`etcdctl endpoint health`)",
            ) from exc
        except (errors.EtcdUnauthenticatedError, errors.EtcdPermissionDeniedError) as exc:
            raise StoreError(
                f"etcd at {self.settings.describe()} refused us: {exc}",
                hint="check ETCD_USERNAME / ETCD_PASSWORD and the user's role",
                status="PERMISSION_DENIED",
            ) from exc
        except errors.EtcdError as exc:
            raise StoreError(f"etcd at {self.settings.describe()} failed: {exc}") from exc
        except grpc.aio.AioRpcError as exc:
            if "lease not found" in (exc.details() or ""):
                raise LeaseExpiredError(f"etcd: {exc.details()} (the lease expired or was revoked)") from exc
            raise StoreError(f"etcd at {self.settings.describe()} failed: {exc.code().name} {exc.details()}") from exc

    async def _kv(self) -> Any:
        return (await self._connected()).kv

    # -- KVStore ---------------------------------------------------------------------------------
    async def get(self, key: str) -> KVEntry | None:
        response = await self._call((await self._kv()).get(key))
        if not response.kvs:
            return None
        kv = response.kvs[0]
        return KVEntry(key, kv.value, kv.mod_revision, kv.lease or None)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        response = await self._call((await self._kv()).put(key, bytes(value), lease=lease or 0))
        return int(response.header.revision)

    async def create(self, key: str, value: bytes, *, lease: int | None = None) -> bool:
        kv = await self._kv()
        compare = kv.txn_compare_create_revision(key, 0)
        response = await self._call(kv.txn([compare], [kv.txn_op_put(key, bytes(value), lease=lease or 0)]))
        return bool(response.succeeded)

    async def delete(self, key: str) -> bool:
        response = await self._call((await self._kv()).delete(key))
        return response.deleted > 0

    async def _range(self, prefix: str) -> Any:
        end = self._etcd.prefix_range_end(prefix) if prefix else b"\0"
        return await self._call((await self._kv()).get(prefix or b"\0", range_end=end))

    async def list(self, prefix: str) -> list[KVEntry]:
        response = await self._range(prefix)
        return [KVEntry(kv.key.decode(), kv.value, kv.mod_revision, kv.lease or None) for kv in response.kvs]

    def watch(self, prefix: str) -> QueueWatch:

        async def opener(watch: QueueWatch) -> None:
            response = await self._range(prefix)
            watch.set_snapshot(
                [KVEntry(kv.key.decode(), kv.value, kv.mod_revision, kv.lease or None) for kv in response.kvs]
            )
            start = int(response.header.revision) + 1
            established: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            watch.feed(self._follow(watch, prefix, start, established), name=f"dyntriton-etcd-watch:{prefix}")
            # Open only once etcd created the watch: a stream created later is a reconnection (see _follow).
            try:
                async with asyncio.timeout(self.settings.timeout):
                    await established
            except BaseException as exc:
                await watch.aclose()
                if isinstance(exc, TimeoutError):
                    raise StoreUnavailableError(
                        f"etcd at {self.settings.describe()} did not open a watch on {prefix!r} within "
                        f"{self.settings.timeout:g} s",
                        hint="check ETCD_ENDPOINTS and that etcd is running (`etcdctl endpoint health`)",
                    ) from exc
                raise

        return QueueWatch(opener)

    async def _follow(
        self, watch: QueueWatch, prefix: str, start_revision: int, established: asyncio.Future[None]
    ) -> None:
        """Feed ``watch`` from etcd until it must be re-listed (see the module docstring), then fail it.

        ``established`` is resolved when etcd created the watch, or failed with why it could not.
        """
        client = await self._connected()
        end = self._etcd.prefix_range_end(prefix) if prefix else b"\0"
        seen = start_revision - 1  # the snapshot's revision
        stream = client.watch.watch(prefix or b"\0", range_end=end, start_revision=start_revision)
        try:
            async with contextlib.aclosing(stream):  # closed here, not by the garbage collector later
                async for response in stream:
                    revision = int(response.header.revision)
                    if response.compact_revision > 0:
                        raise StoreError(
                            f"etcd compacted its history past revision {seen} (now from "
                            f"{response.compact_revision}): the watch cannot resume"
                        )
                    if 0 < revision < seen:
                        raise StoreError(
                            f"etcd's revision went back from {seen} to {revision}: the store was wiped, restarted "
                            "without its data or restored from a backup, so the watch cannot resume"
                        )
                    if response.created:
                        if established.done():  # etcd3aio opened a new stream after a transient error
                            raise StoreUnavailableError(
                                f"etcd at {self.settings.describe()} is reachable again; the watch on {prefix!r} "
                                "starts over in case etcd lost its data meanwhile"
                            )
                        established.set_result(None)
                    seen = max(seen, revision)
                    for event in response.events:
                        kind = EventKind.DELETE if event.type == 1 else EventKind.PUT
                        value = None if kind is EventKind.DELETE else event.kv.value
                        watch.push(WatchEvent(kind, event.kv.key.decode(), value, event.kv.mod_revision))
            raise StoreUnavailableError(f"etcd at {self.settings.describe()} ended the watch on {prefix!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, StoreError)
                else StoreUnavailableError(f"watch on etcd at {self.settings.describe()} failed: {exc}")
            )
            if not established.done():
                established.set_exception(error)
            watch.fail(error)

    async def grant_lease(self, ttl: float) -> int:
        client = await self._connected()
        response = await self._call(client.lease.grant(max(1, round(ttl))))
        return int(response.ID)

    async def keep_alive(self, lease: int) -> None:
        client = await self._connected()
        call = client.lease.keep_alive(lease)
        try:
            response = await self._call(call.read())
        finally:
            call.cancel()
        if response is None or response.TTL <= 0:
            raise LeaseExpiredError(f"etcd lease {lease:x} does not exist (expired or revoked)")

    async def revoke_lease(self, lease: int) -> None:
        client = await self._connected()
        with contextlib.suppress(LeaseExpiredError):
            await self._call(client.lease.revoke(lease))

    async def close(self) -> None:
        if self._refresher is not None:
            with contextlib.suppress(Exception):
                await self._refresher.__aexit__(None, None, None)
            self._refresher = None
        if self._client is not None:
            await self._client.close()
            self._client = None


def _default_ca() -> bytes | None:
    """The system CA bundle, for https:// endpoints without an explicit CA file."""
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        with contextlib.suppress(OSError):
            return Path(path).read_bytes()
    return None
