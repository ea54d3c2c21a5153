"""The frontend side of cluster model control: the ModelRepository the protocol frontends answer from.

A load or unload is a control record written to the store (``control_records.py``); the workers
that take model control apply it and report their outcome in their repository reports, which this
module watches from *before* it writes the record, so no outcome is missed. A load answers once
every worker whose repository has the model answered: successfully when at least one loaded it,
after the frontend's routing table holds the cards they published (so the next request, and
ModelConfig, see what was loaded, whichever worker answers them), else with the workers' errors.
Waiting for all of them is what keeps a reload with a config override from leaving the workers
serving two configs behind one answer. An unload answers once every such worker unloaded it and
their cards are gone. Workers that die while a request waits count as failed (their report
vanishes with their lease).
See docs/model-control.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from dynamo_triton.errors import DeadlineExceededError, DyntritonError, InvalidRequestError, NoInstanceError
from dynamo_triton.frontend import RepositoryModel
from dynamo_triton.kv import EventKind, KVStore
from dynamo_triton.runtime.cards import ModelCard, card_key
from dynamo_triton.runtime.control_records import (
    ControlRecord,
    ModelEntry,
    RepositoryReport,
    check_load_parameters,
    control_key,
    reports_prefix,
)
from dynamo_triton.runtime.discovery import ModelTable

__all__ = ["ClusterRepository", "merge_entries"]

log = logging.getLogger(__name__)

#: Seconds a load or unload waits for the workers when the client set no deadline.
DEFAULT_TIMEOUT = 300.0

_RANK = {"READY": 0, "LOADING": 1, "UNLOADING": 2, "UNAVAILABLE": 3}

#: What a worker that left while a request waited for it answered, in effect.
_GONE = ModelEntry(outcome="error", error="the worker left before it answered", status="UNAVAILABLE")


def merge_entries(name: str, entries: list[ModelEntry]) -> RepositoryModel:
    """One index entry from every worker's: the most available state wins (READY, LOADING, UNLOADING,
    UNAVAILABLE, never loaded); the reasons of an UNAVAILABLE model are the workers' distinct reasons."""
    best = min(entries, key=lambda entry: _RANK.get(entry.state, len(_RANK)))
    reason = best.reason
    if best.state == "UNAVAILABLE":
        reason = "; ".join(dict.fromkeys(e.reason for e in entries if e.state == "UNAVAILABLE" and e.reason))
    return RepositoryModel(name=name, version=best.version, state=best.state, reason=reason)


class ClusterRepository:
    """:class:`~dynamo_triton.frontend.ModelRepository` over the store and the frontend's routing table."""

    def __init__(self, store: KVStore, namespace: str, table: ModelTable, *, default_timeout: float = DEFAULT_TIMEOUT):
        self._store, self._namespace, self._table = store, namespace, table
        self.default_timeout = default_timeout
        self._table_waiters: set[asyncio.Event] = set()
        #: Models this frontend unloaded (and did not load since): their errors say so (RoutingService.unloaded).
        self.unloaded: set[str] = set()
        table.subscribe(self._table_changed)

    def _table_changed(self) -> None:
        for event in self._table_waiters:
            event.set()

    async def _reports(self) -> dict[str, RepositoryReport]:
        reports = {}
        for entry in await self._store.list(reports_prefix(self._namespace)):
            try:
                report = RepositoryReport.from_json(entry.value)
            except DyntritonError as exc:
                log.warning("ignoring the repository report at %s: %s", entry.key, exc)
                continue
            reports[report.instance_id] = report
        return reports

    # -- RepositoryIndex -------------------------------------------------------------------------
    async def index(self, *, ready: bool = False) -> list[RepositoryModel]:
        entries: dict[str, list[ModelEntry]] = {}
        for report in (await self._reports()).values():
            for name, entry in report.models.items():
                entries.setdefault(name, []).append(entry)
        for name in self._table.model_names():  # served by a worker that publishes no report
            if name not in entries:
                instances = self._table.instances(name)
                entries[name] = [ModelEntry(state="READY", version=instances[0].card.version if instances else "")]
        models = [merge_entries(name, found) for name, found in sorted(entries.items())]
        return [model for model in models if model.state == "READY"] if ready else models

    # -- RepositoryModelLoad / Unload ------------------------------------------------------------
    async def load(
        self,
        name: str,
        *,
        config: str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        files = dict(files or {})
        check_load_parameters(name, config, files)
        reports = await self._explicit_reports()
        expected = {iid for iid, report in reports.items() if files or name in report.models}
        if not expected:
            have = sorted({model for report in reports.values() for model in report.models})
            raise InvalidRequestError(
                f"failed to load '{name}': no model repository of the workers has it; "
                f"they have: {', '.join(have) or 'no models'}",
                hint="add the model's folder to the workers' --model-repository, or send its files as "
                "file:<version>/<name> parameters with a config",
            )
        record = ControlRecord(model=name, action="load", config=config, files=files)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.default_timeout if timeout is None else timeout)
        results = await self._send(record, expected, deadline)
        loaded = [iid for iid, entry in results.items() if entry.outcome == "ok"]
        if not loaded:
            raise _failure("load", name, results)
        if len(loaded) < len(results):
            log.warning("%s", _failure("load", name, results).message)
        self.unloaded.discard(name)
        await self._cards_in_table(name, loaded, deadline)

    async def unload(self, name: str, *, timeout: float | None = None) -> None:
        if not name or "/" in name:
            raise InvalidRequestError(f"invalid model name '{name}'")
        reports = await self._explicit_reports()
        expected = {iid for iid, report in reports.items() if name in report.models}
        record = ControlRecord(model=name, action="unload")
        if not expected:  # unloading what nobody has does nothing (as Triton); a loaded-by-files record is undone
            if await self._store.get(control_key(self._namespace, name)) is not None:
                await self._store.put(control_key(self._namespace, name), record.to_json())
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.default_timeout if timeout is None else timeout)
        results = await self._send(record, expected, deadline)
        if any(entry.outcome != "ok" for entry in results.values()):
            raise _failure("unload", name, results)
        self.unloaded.add(name)
        await self._until(lambda: not any(self._table.instance(name, iid) for iid in expected), deadline, name)

    async def _explicit_reports(self) -> dict[str, RepositoryReport]:
        reports = {iid: report for iid, report in (await self._reports()).items() if report.control == "explicit"}
        if not reports:
            raise DyntritonError(
                "explicit model load / unload is not allowed: no live worker runs with --model-control explicit",
                hint="start workers with `dyntriton worker --model-control explicit`",
                status="UNAVAILABLE",
            )
        return reports

    async def _send(
        self,
        record: ControlRecord,
        expected: set[str],
        deadline: float,
    ) -> dict[str, ModelEntry]:
        """Write ``record``; collect the outcome of every expected worker (a worker that left: ``_GONE``)."""
        prefix = reports_prefix(self._namespace)
        results: dict[str, ModelEntry] = {}

        def finished() -> bool:
            return len(results) == len(expected)

        try:
            async with asyncio.timeout_at(deadline):
                async with self._store.watch(prefix) as watch:
                    present = {entry.key[len(prefix) :] for entry in watch.snapshot}
                    results.update({iid: _GONE for iid in expected - present})
                    await self._store.put(control_key(self._namespace, record.model), record.to_json())
                    if finished():
                        return results
                    async for event in watch:
                        iid = event.key[len(prefix) :]
                        if iid not in expected or iid in results:
                            continue
                        if event.kind is EventKind.DELETE or event.value is None:
                            results[iid] = _GONE
                        else:
                            entry = _entry_of(event.value, record)
                            if entry is not None:
                                results[iid] = entry
                        if finished():
                            return results
                    results.update({iid: _GONE for iid in expected - set(results)})  # the watch ended
        except TimeoutError:
            pending = sorted(expected - set(results))
            raise DeadlineExceededError(
                f"{record.action} of model '{record.model}' did not finish in time; "
                f"still waiting for worker(s) {', '.join(pending)}",
                hint="the workers go on with it: see its state with `dyntriton model ls` (RepositoryIndex)",
            ) from None
        return results

    async def _cards_in_table(self, name: str, instances: list[str], deadline: float) -> None:
        """Wait until the routing table holds the cards ``instances`` published for ``name`` (those still there)."""
        cards: dict[str, ModelCard] = {}
        for iid in instances:
            entry = await self._store.get(card_key(self._namespace, name, iid))
            if entry is not None:
                cards[iid] = ModelCard.from_json(entry.value)
        if not cards:
            raise NoInstanceError(f"model '{name}' loaded, but the workers that loaded it left since")

        def seen() -> bool:
            return all(
                (inst := self._table.instance(name, iid)) is not None and inst.card == card
                for iid, card in cards.items()
            )

        await self._until(seen, deadline, name)

    async def _until(self, check: Callable[[], bool], deadline: float, name: str) -> None:
        event = asyncio.Event()
        self._table_waiters.add(event)
        try:
            async with asyncio.timeout_at(deadline):
                while not check():
                    event.clear()
                    await event.wait()
        except TimeoutError:
            raise DeadlineExceededError(
                f"the workers applied the request, but this frontend's routing table did not show model "
                f"'{name}' as they left it in time"
            ) from None
        finally:
            self._table_waiters.discard(event)


def _entry_of(raw: bytes, record: ControlRecord) -> ModelEntry | None:
    """The worker's finished outcome of ``record`` in a report, or None (not there yet)."""
    try:
        report = RepositoryReport.from_json(raw)
    except DyntritonError:
        return None
    entry = report.models.get(record.model)
    if entry is None or entry.request_id != record.request_id or not entry.outcome:
        return None
    return entry


def _failure(action: str, name: str, results: dict[str, ModelEntry]) -> DyntritonError:
    """One error from every worker's: one message when they agree, else each worker's, with its status."""
    failed = {iid: entry for iid, entry in results.items() if entry.outcome != "ok"}
    messages = list(dict.fromkeys(entry.error for entry in failed.values()))
    if len(messages) == 1:
        text = messages[0] + (f" (on {len(failed)} workers)" if len(failed) > 1 else "")
    else:
        text = "; ".join(f"worker {iid}: {entry.error}" for iid, entry in sorted(failed.items()))
    statuses = [entry.status for entry in failed.values() if entry.status and entry.status != "UNAVAILABLE"]
    status = statuses[0] if statuses else "UNAVAILABLE"
    if not text.startswith(f"failed to {action}"):
        text = f"failed to {action} '{name}': {text}"
    return DyntritonError(text, status=status)
