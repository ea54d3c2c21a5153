"""The worker side of cluster model control: apply the store's control records, report the repository.

A :class:`ModelController` runs next to a :class:`~dynamo_triton.runtime.worker.Worker`. It always
publishes the worker's *repository report* (every model of its repository and its state, see
``control_records.py``) under a lease of its own, so a dead worker's report vanishes with it. With
``explicit`` control it also watches the control records and applies those about models its
repository has (or any record bringing its own ``file:`` directory):

- **load**: the backend (re)loads the model with the record's ``config`` / ``files``; on success the
  worker publishes the model's card (the new config included) *before* the report says ``ok``, so a
  frontend that saw the outcome finds the card.
- **unload**: the card is withdrawn first (frontends stop routing here), then the backend unloads the
  model once its requests in flight are done.

Records of one model are applied one at a time, in the order they were written; every request's
outcome is reported. When the watch opens, the worker catches up with the cluster: it loads what the
records say is loaded; unload records from before it started are left alone. See docs/model-control.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import replace

from dynamo_triton.backoff import Backoff
from dynamo_triton.errors import DyntritonError, ModelNotFoundError
from dynamo_triton.kv import EventKind
from dynamo_triton.leases import LeaseKeeper
from dynamo_triton.runtime.control_records import (
    ControlRecord,
    ModelEntry,
    RepositoryReport,
    check_load_parameters,
    control_prefix,
    report_key,
)
from dynamo_triton.runtime.worker import Worker

__all__ = ["ModelController"]

log = logging.getLogger(__name__)


class ModelController:
    """Applies control records for ``worker`` (when ``explicit``) and publishes its repository report.

    :param refresh_interval: seconds between two reads of the repository's model names (a model
        folder added at run time shows up in the index, and can be loaded, within that time).
    """

    def __init__(self, worker: Worker, *, explicit: bool, refresh_interval: float = 5.0):
        self.worker, self.store, self.explicit = worker, worker.store, explicit
        self.namespace = worker.settings.namespace
        self.refresh_interval = refresh_interval
        self.entries: dict[str, ModelEntry] = {}
        self._names: set[str] = set()
        self._queues: dict[str, list[ControlRecord]] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lease: LeaseKeeper | None = None
        self._write = asyncio.Lock()
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Publish the report (under a new lease) and, with explicit control, start following records."""
        self._names = set(await self.worker.backend.repository_index())
        for name, info in self.worker.models.items():
            self.entries[name] = ModelEntry(state="READY", version=info.version)
        await self._grant()
        self._tasks.append(asyncio.create_task(self._refresh_names(), name="dyntriton-repository-refresh"))
        if self.explicit:
            self._tasks.append(asyncio.create_task(self._follow(), name="dyntriton-model-control"))

    async def stop(self) -> None:
        """Stop following and revoke the report's lease (the report disappears)."""
        self._stopping = True
        tasks = self._tasks + list(self._runners.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lease is not None:
            try:
                await self._lease.close(revoke=True)
            except DyntritonError as exc:
                log.warning("could not revoke the repository report's lease (it will expire): %s", exc)

    async def _grant(self) -> None:
        self._lease = LeaseKeeper(self.store, self.worker.settings.lease_ttl, on_lost=self._on_lease_lost)
        await self._lease.start()
        await self._publish()

    def _on_lease_lost(self) -> None:
        if not self._stopping:
            self._tasks.append(asyncio.get_running_loop().create_task(self._grant_again()))

    async def _grant_again(self) -> None:
        backoff = Backoff(0.5)
        while not self._stopping:
            try:
                await self._grant()
                return
            except DyntritonError as exc:
                log.warning(
                    "publishing the repository report again failed (%s); retrying in %.1f s", exc, backoff.delay
                )
                await backoff.wait()

    # -- the report ------------------------------------------------------------------------------
    def report(self) -> RepositoryReport:
        """What this worker says about its repository now."""
        names = self._names | set(self.entries)
        return RepositoryReport(
            instance_id=self.worker.instance_id,
            control="explicit" if self.explicit else "none",
            models={name: self.entries.get(name, ModelEntry()) for name in names},
            host=socket.gethostname(),
        )

    async def _publish(self) -> None:
        """Put the report; every state change is one put (frontends waiting on an outcome see each)."""
        async with self._write:
            lease = self._lease.lease_id if self._lease is not None else None
            if lease is None:
                return
            try:
                await self.store.put(
                    report_key(self.namespace, self.worker.instance_id), self.report().to_json(), lease=lease
                )
            except DyntritonError as exc:
                log.warning("could not publish the repository report: %s", exc)

    async def _refresh_names(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                names = set(await self.worker.backend.repository_index())
            except DyntritonError as exc:
                log.debug("reading the repository index failed: %s", exc)
                continue
            if names != self._names:
                self._names = names
                await self._publish()

    # -- following control records ---------------------------------------------------------------
    async def _follow(self) -> None:
        backoff, first = Backoff(0.2), True
        prefix = control_prefix(self.namespace)
        while True:
            try:
                async with self.store.watch(prefix) as watch:
                    for entry in watch.snapshot:
                        self._received(entry.value, catching_up=first)
                    first = False
                    backoff.reset()
                    async for event in watch:
                        if event.kind is EventKind.PUT and event.value is not None:
                            self._received(event.value, catching_up=False)
            except asyncio.CancelledError:
                raise
            except DyntritonError as exc:
                log.warning("watch on %s failed (%s); retrying in %.1f s", prefix, exc, backoff.delay)
            except Exception:
                log.exception("watch on %s failed; retrying in %.1f s", prefix, backoff.delay)
            await backoff.wait()

    def _received(self, raw: bytes, *, catching_up: bool) -> None:
        try:
            record = ControlRecord.from_json(raw)
        except DyntritonError as exc:
            log.warning("ignoring a control record: %s", exc)
            return
        entry = self.entries.get(record.model)
        if entry is not None and entry.request_id == record.request_id:
            return  # already applied (the watch was re-opened)
        if catching_up and record.action == "unload":
            return  # what was unloaded before this worker started is none of its business
        self._queues.setdefault(record.model, []).append(record)
        runner = self._runners.get(record.model)
        if runner is None or runner.done():
            self._runners[record.model] = asyncio.create_task(
                self._run(record.model), name=f"dyntriton-model-control-{record.model}"
            )

    async def _run(self, model: str) -> None:
        queue = self._queues[model]
        while queue:
            record = queue.pop(0)
            try:
                if await self._concerns(record):
                    await (self._load(record) if record.action == "load" else self._unload(record))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("applying %s of model '%s' failed", record.action, model)

    async def _concerns(self, record: ControlRecord) -> bool:
        """True for a record about a model this worker has (or may load from the record's files)."""
        if record.action == "load" and record.files:
            return True
        if record.model in self._names or record.model in self.entries:
            return True
        self._names = set(await self.worker.backend.repository_index())  # a folder added just now?
        return record.model in self._names

    async def _load(self, record: ControlRecord) -> None:
        model, before = record.model, self.entries.get(record.model, ModelEntry())
        serving = model in self.worker.models
        self.entries[model] = ModelEntry(
            state="READY" if serving else "LOADING",
            version=before.version if serving else "",
            request_id=record.request_id,
            action="load",
        )
        await self._publish()
        log.info("loading model '%s' (request %s)", model, record.request_id)
        try:
            check_load_parameters(model, record.config, record.files)
            if record.config is None and not record.files:
                info = await self.worker.backend.load_model(model)
            else:
                info = await self.worker.backend.load_model(model, config=record.config, files=dict(record.files))
            await self.worker.publish(info)
        except Exception as exc:
            error = exc if isinstance(exc, DyntritonError) else DyntritonError(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, DyntritonError):
                log.exception("loading model '%s' failed", model)
            serving = model in self.worker.models  # Triton keeps serving the old one when a reload fails
            self.entries[model] = replace(
                self.entries[model],
                state="READY" if serving else "UNAVAILABLE",
                reason="" if serving else error.message,
                outcome="error",
                error=error.message,
                status=error.status,
            )
            log.warning("model '%s' did not load: %s", model, error.message)
        else:
            self.entries[model] = replace(self.entries[model], state="READY", version=info.version, outcome="ok")
        await self._publish()

    async def _unload(self, record: ControlRecord) -> None:
        model, before = record.model, self.entries.get(record.model, ModelEntry())
        entry = ModelEntry(
            state=before.state,
            version=before.version,
            reason=before.reason,
            request_id=record.request_id,
            action="unload",
        )
        if model in self.worker.models:
            self.entries[model] = replace(entry, state="UNLOADING", reason="")
            await self._publish()
            log.info("unloading model '%s' (request %s)", model, record.request_id)
            try:
                await self.worker.withdraw(model)
                await self.worker.backend.unload_model(model)
            except ModelNotFoundError:
                pass
            except DyntritonError as exc:
                self.entries[model] = replace(entry, outcome="error", error=exc.message, status=exc.status)
                await self._publish()
                return
            entry = replace(entry, state="UNAVAILABLE", reason="unloaded")
        self.entries[model] = replace(entry, outcome="ok")  # unloading what is not loaded does nothing, as Triton
        await self._publish()
