"""Triton's system shared-memory extension on the frontend side: registered regions and their mappings.

A client creates a POSIX shared-memory object (``/dev/shm/<key>``), registers it under a
name (``SystemSharedMemoryRegister`` / ``POST /v2/systemsharedmemory/region/<name>/register``)
and then names the region in its requests instead of sending tensor bytes.

Where registrations live: in the KV store, at
``dyntriton/v1/{namespace}/shared_memory/{host}/{name}`` (JSON ``{"key", "offset", "byte_size"}``,
no lease), ``{host}`` being :func:`host_identity`. Every frontend process of this host reads the
same entries, so a region registered through one process is usable through any other (``serve
--frontends N`` shares the ports; connections move after ``--max-connection-age``). Each process
keeps a cache filled by a watch on its host's prefix, and reads the store on a miss (a
registration made a moment ago through another process is found at once).

Mappings are made lazily, per process, on first use, and undone when the region is
unregistered (by any process: the watch sees the delete) and when the client unlinks its
``/dev/shm`` object (a periodic check, :data:`CHECK_INTERVAL`): nothing of a client that left
stays mapped. A region used after its object was unlinked fails with Triton's "Unable to open".

Errors carry Triton's messages and statuses (checked side by side with ``tritonserver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dynamo_triton.errors import DyntritonError, InvalidRequestError, ModelNotFoundError

if TYPE_CHECKING:
    from dynamo_triton.kv import KVStore

__all__ = [
    "CHECK_INTERVAL",
    "HOST_ENV",
    "SHM_ROOT",
    "MappedRegion",
    "Region",
    "SharedMemoryRegistry",
    "host_identity",
    "region_not_found",
    "region_records",
]

log = logging.getLogger(__name__)

#: Where POSIX shared-memory objects live on Linux (``shm_open("/k")`` is ``/dev/shm/k``).
SHM_ROOT = Path("/dev/shm")
#: Seconds between checks that the mapped regions' ``/dev/shm`` objects still exist.
CHECK_INTERVAL = 1.0


#: Environment variable that overrides :func:`host_identity` (processes given different values never
#: hand each other regions by reference; the frontend then copies, as for a worker on another host).
HOST_ENV = "DYN_SHM_HOST"


def host_identity() -> str:
    """What names this host's shared memory: the boot id and the device of ``/dev/shm``.

    Two processes see the same ``/dev/shm`` objects exactly when both parts agree (a container
    with its own IPC namespace has its own ``/dev/shm`` mount, hence another device).
    ``DYN_SHM_HOST`` overrides it.
    """
    override = os.environ.get(HOST_ENV)
    if override:
        return override
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = os.uname().nodename
    try:
        device = os.stat(SHM_ROOT).st_dev
    except OSError:
        device = 0
    return f"{boot}-{device:x}"


@dataclass(frozen=True)
class Region:
    """A registered region, as ``SystemSharedMemoryStatus`` reports it."""

    name: str
    key: str
    offset: int
    byte_size: int


def region_not_found(name: str) -> DyntritonError:
    """Triton's answer to a request that names an unregistered region."""
    return ModelNotFoundError(f"Unable to find shared memory region: '{name}'")


def _path(key: str) -> Path:
    return SHM_ROOT / key.lstrip("/")


class MappedRegion:
    """A region mapped into this process; reads and writes are bounds-checked with Triton's messages."""

    __slots__ = ("_map", "inode", "region")

    def __init__(self, region: Region):
        self.region = region
        try:
            fd = os.open(_path(region.key), os.O_RDWR)
        except OSError:
            raise DyntritonError(f"Unable to open shared memory region: '{region.key}'") from None
        try:
            stat = os.fstat(fd)
            if region.offset + region.byte_size > stat.st_size:
                raise InvalidRequestError(f"failed to register shared memory region '{region.name}': invalid args")
            self.inode = (stat.st_dev, stat.st_ino)
            length = region.offset + region.byte_size
            self._map = mmap.mmap(fd, length) if length else None
        finally:
            os.close(fd)

    def _span(self, offset: int, byte_size: int) -> tuple[int, int]:
        if offset < 0:
            raise InvalidRequestError(f"Invalid offset for shared memory region: '{self.region.name}'")
        if byte_size < 0 or offset + byte_size > self.region.byte_size:
            raise InvalidRequestError(f"Invalid offset + byte size for shared memory region: '{self.region.name}'")
        start = self.region.offset + offset
        return start, start + byte_size

    def check(self, offset: int, byte_size: int) -> None:
        """Raise Triton's INVALID_ARGUMENT if ``[offset, offset + byte_size)`` is not inside the region."""
        self._span(offset, byte_size)

    def read(self, offset: int, byte_size: int) -> bytes:
        """A copy of ``byte_size`` bytes at ``offset`` (relative to the region's own offset)."""
        start, end = self._span(offset, byte_size)
        return self._map[start:end] if self._map is not None else b""

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (relative to the region's own offset)."""
        start, end = self._span(offset, len(data))
        if self._map is not None and end > start:
            self._map[start:end] = data

    def unlinked(self) -> bool:
        """True when the client removed (or replaced) the ``/dev/shm`` object this mapping shows."""
        try:
            stat = os.stat(_path(self.region.key))
        except OSError:
            return True
        return (stat.st_dev, stat.st_ino) != self.inode

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class SharedMemoryRegistry:
    """The regions registered for this host, shared by every frontend process of the host through the store.

    :param store: the cluster's KV store.
    :param namespace: the cluster's namespace.
    :param host: this host's identity (default :func:`host_identity`).
    """

    def __init__(self, store: KVStore, namespace: str, *, host: str | None = None):
        self._store = store
        self.host = host or host_identity()
        self.prefix = f"dyntriton/v1/{namespace}/shared_memory/{self.host}/"
        self._known: dict[str, Region] = {}
        self._mapped: dict[str, MappedRegion] = {}

    # -- the extension's calls -------------------------------------------------------------------
    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register ``key`` (``[offset, offset + byte_size)`` of it) as ``name``, Triton's checks and messages."""
        if offset < 0 or byte_size < 0:
            raise InvalidRequestError(f"failed to register shared memory region '{name}': invalid args")
        region = Region(name, key, offset, byte_size)
        mapped = MappedRegion(region)  # opens and checks the object now, as Triton does
        try:
            value = json.dumps({"key": key, "offset": offset, "byte_size": byte_size}).encode()
            if not await self._store.create(self.prefix + name, value):
                raise DyntritonError(f"shared memory region '{name}' already in manager", status="ALREADY_EXISTS")
        except BaseException:
            mapped.close()
            raise
        self._forget(name)
        self._known[name] = region
        self._mapped[name] = mapped

    async def unregister(self, name: str = "") -> None:
        """Unregister ``name`` (every region when empty); an unknown name is not an error (Triton's rule)."""
        names = [name] if name else [entry.key[len(self.prefix) :] for entry in await self._store.list(self.prefix)]
        for each in names:
            await self._store.delete(self.prefix + each)
            self._forget(each)
        if not name:
            for each in list(self._mapped):
                self._forget(each)

    async def status(self, name: str = "") -> list[Region]:
        """The registered regions (only ``name``'s when given), sorted by name.

        :raises DyntritonError: NOT_FOUND "Unable to find system shared memory region" for an unknown name.
        """
        if name:
            region = await self._lookup(name)
            if region is None:
                raise ModelNotFoundError(f"Unable to find system shared memory region: '{name}'")
            return [region]
        regions = [_region(entry.key[len(self.prefix) :], entry.value) for entry in await self._store.list(self.prefix)]
        return sorted(regions, key=lambda region: region.name)

    # -- the data path ---------------------------------------------------------------------------
    def cached(self, name: str) -> MappedRegion | None:
        """The region mapped in this process, without waiting (None: call :meth:`region`)."""
        return self._mapped.get(name)

    async def region(self, name: str) -> MappedRegion:
        """The region ``name``, mapped in this process.

        :raises DyntritonError: NOT_FOUND for an unregistered name; INTERNAL when its object is gone.
        """
        mapped = self._mapped.get(name)
        if mapped is not None:
            return mapped
        region = self._known.get(name) or await self._lookup(name)
        if region is None:
            raise region_not_found(name)
        mapped = self._mapped.get(name)  # another request mapped it while we read the store
        if mapped is None:
            mapped = self._mapped[name] = MappedRegion(region)
        return mapped

    def mapped_names(self) -> list[str]:
        """The regions mapped in this process now."""
        return sorted(self._mapped)

    # -- keeping up with other processes and with clients ----------------------------------------
    async def run(self) -> None:
        """Follow the host's registrations and drop mappings of unlinked objects, until cancelled.

        Every mapping is undone when this returns or is cancelled.
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow())
                group.create_task(self._check_unlinked())
        finally:
            self.close()

    async def _follow(self) -> None:
        """Keep the cache and the mappings in step with the store; a failed watch is reopened (a miss
        still reads the store meanwhile)."""
        while True:
            try:
                await self._watch()
            except DyntritonError as exc:
                log.warning("shared memory registrations: the store watch failed (%s); retrying in 1 s", exc)
            await asyncio.sleep(1.0)

    async def _watch(self) -> None:
        async with self._store.watch(self.prefix) as watch:
            self._known = {
                entry.key[len(self.prefix) :]: _region(entry.key[len(self.prefix) :], entry.value)
                for entry in watch.snapshot
            }
            for name in [name for name in self._mapped if name not in self._known]:
                self._forget(name)
            async for event in watch:
                name = event.key[len(self.prefix) :]
                if event.value is None:
                    self._forget(name)
                    continue
                region = _region(name, event.value)
                mapped = self._mapped.get(name)
                if mapped is not None and mapped.region != region:
                    self._forget(name)
                self._known[name] = region

    async def _check_unlinked(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)  # no event tells a process that another one unlinked a file
            for name, mapped in list(self._mapped.items()):
                if mapped.unlinked():
                    log.info("shared memory region %r: its object %r is gone; unmapped", name, mapped.region.key)
                    self._mapped.pop(name, None)
                    mapped.close()

    def _forget(self, name: str) -> None:
        self._known.pop(name, None)
        mapped = self._mapped.pop(name, None)
        if mapped is not None:
            mapped.close()

    async def _lookup(self, name: str) -> Region | None:
        entry = await self._store.get(self.prefix + name)
        if entry is None:
            return None
        region = self._known[name] = _region(name, entry.value)
        return region

    def close(self) -> None:
        """Unmap every region (registrations stay in the store)."""
        for name in list(self._mapped):
            with contextlib.suppress(Exception):
                self._mapped.pop(name).close()


def _region(name: str, value: bytes) -> Region:
    record = json.loads(value)
    return Region(name, str(record["key"]), int(record["offset"]), int(record["byte_size"]))


def region_records(regions: list[Region]) -> list[dict[str, object]]:
    """The regions as Triton's REST status lists them."""
    return [asdict(region) for region in regions]
