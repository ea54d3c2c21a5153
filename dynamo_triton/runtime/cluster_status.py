"""The state of a cluster at one moment, from the store and the workers' system ports.

:func:`collect` lists the model, worker and frontend cards of one namespace, or of every
namespace in the store (one listing), asks every worker's system port for ``/stats`` at the
same time with a short timeout, and joins it all into one :class:`ClusterStatus` (``dyntriton status``, ``top``;
the JSON form is documented in docs/status.md). It never waits longer than about one
timeout for the workers, however many there are or however dead they are.

A worker's state:

- ``draining``: its worker card says so (it withdrew its model cards and finishes what it runs);
- ``unresponsive``: its system port accepted the connection but did not answer within the timeout
  (a frozen process, e.g. SIGSTOP), or a frontend whose card is fresh reports its transport
  heartbeats unanswered;
- ``serving`` otherwise. A system port that cannot be reached (refused, no route, no system
  port) does not make a worker unresponsive: frontends may reach what this host cannot; it is
  shown as the system port's status, with its load unknown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from dynamo_triton.errors import ConfigError
from dynamo_triton.kv import KVStore
from dynamo_triton.runtime.cards import ModelCard, models_prefix, parse_card_key
from dynamo_triton.runtime.frontend_card import FrontendCard
from dynamo_triton.runtime.metrics_window import ModelLoad
from dynamo_triton.runtime.system_server import STATS_SCHEMA
from dynamo_triton.runtime.worker_card import WorkerCard

__all__ = [
    "STATUS_SCHEMA",
    "ClusterStatus",
    "ConfigSummary",
    "FrontendEntry",
    "ModelEntry",
    "SystemPort",
    "WorkerEntry",
    "collect",
]

STATUS_SCHEMA = "dyntriton.status/v1"

#: Where every namespace's records live (``dyntriton/v1/``).
_ROOT = models_prefix("_").removesuffix("_/models/")

#: Seconds a worker's system port gets to answer (the frontends' default liveness bound).
PROBE_TIMEOUT = 1.0

#: A frontend card not put again for this many of its intervals is stale (its process is stuck or gone).
STALE_INTERVALS = 3

#: aiohttp ≥ 3.10 tells a connect timeout (nothing there) from a read timeout (there, but silent).
_CONNECT_TIMEOUT: tuple[type[BaseException], ...] = tuple(
    cls for cls in (getattr(aiohttp, "ConnectionTimeoutError", None),) if cls is not None
)


@dataclass
class SystemPort:
    """How a worker's system port answered.

    :param status: ``ok``; ``timeout`` (connected, no answer in time: frozen or overloaded);
        ``unreachable`` (refused, no route, no connection in time); ``error`` (answered, not with
        ``/stats``: e.g. an older dyntriton); ``none`` (the worker published no system port).
    :param error: what went wrong, as a sentence ("" when ``ok``).
    """

    url: str
    status: str
    error: str = ""


@dataclass
class ConfigSummary:
    """The parts of a Triton model config an operator looks at first."""

    backend: str
    max_batch_size: int
    instance_count: int
    dynamic_batching: bool
    sequence: bool
    decoupled: bool


@dataclass
class WorkerEntry:
    """One worker instance as it serves one model.

    :param local: the worker runs on this host (its ``pid`` means something here).
    :param load: this model's load on this worker (ModelLoad fields), None when its system port did not say.
    :param unresponsive_to: ids of the frontends whose transport reports this worker unresponsive.
    :param uptime_seconds: how long its system port has served, as it answered (None: no answer); the
        difference between two looks is the time between its two readings of ``load``.
    """

    instance_id: str
    state: str
    host: str
    address: str
    transport: str
    pid: int
    local: bool
    server_name: str
    server_version: str
    model_version: str
    config: ConfigSummary | None
    system: SystemPort
    load: dict[str, Any] | None
    unresponsive_to: list[str] = field(default_factory=list)
    uptime_seconds: float | None = None
    namespace: str = ""


@dataclass
class ModelEntry:
    """A model and every worker instance that serves it (or drains it)."""

    name: str
    versions: list[str]
    workers: list[WorkerEntry]
    namespace: str = ""

    @property
    def requests_per_second(self) -> float:
        return sum(float(w.load["requests_per_second"]) for w in self.workers if w.load)


@dataclass
class FrontendEntry:
    """One frontend process, from its card.

    :param age_seconds: how old its card is; ``stale`` when older than a few of its intervals.
    :param models: per model, its load as the frontend sees it (ModelLoad fields).
    """

    frontend_id: str
    host: str
    pid: int
    local: bool
    grpc: str
    http: str
    age_seconds: float
    stale: bool
    instances: int
    unresponsive: list[str]
    models: dict[str, dict[str, Any]]
    namespace: str = ""


@dataclass
class ClusterStatus:
    """Everything ``dyntriton status`` shows (its ``--json`` document)."""

    schema: str
    time: float
    store: str
    namespaces: list[str]
    probe_timeout: float
    models: list[ModelEntry]
    frontends: list[FrontendEntry]
    workers_without_models: list[WorkerEntry]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (docs/status.md)."""
        return asdict(self)


def _config_summary(card: ModelCard) -> ConfigSummary:
    config = card.config
    groups = config.get("instance_group") or [{}]
    return ConfigSummary(
        backend=str(config.get("backend") or config.get("platform") or ""),
        max_batch_size=int(config.get("max_batch_size", 0)),
        instance_count=sum(int(group.get("count", 1)) for group in groups),
        dynamic_batching="dynamic_batching" in config,
        sequence="sequence_batching" in config,
        decoupled=card.decoupled,
    )


async def _probe(session: aiohttp.ClientSession, url: str, timeout: float) -> tuple[SystemPort, dict[str, Any] | None]:
    """GET ``url``/stats within ``timeout`` seconds; never raises."""
    if not url:
        return SystemPort("", "none", "the worker published no system port"), None
    limits = aiohttp.ClientTimeout(total=timeout, sock_connect=timeout)
    try:
        async with session.get(f"{url}/stats", timeout=limits) as response:
            if response.status != 200:
                return SystemPort(url, "error", f"/stats answered HTTP {response.status}"), None
            body = await response.json(content_type=None)
    except _CONNECT_TIMEOUT:
        return SystemPort(url, "unreachable", f"unreachable: no connection within {timeout:g} s"), None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return SystemPort(url, "timeout", f"connected, but no answer within {timeout:g} s"), None
    except aiohttp.ClientConnectorError as exc:
        errno = getattr(exc.os_error, "errno", None)
        reason = os.strerror(errno) if isinstance(errno, int) and errno > 0 else (exc.strerror or str(exc))
        return SystemPort(url, "unreachable", f"unreachable: {reason}"), None
    except (aiohttp.ClientError, ValueError) as exc:
        return SystemPort(url, "error", f"{type(exc).__name__}: {exc}"), None
    if not isinstance(body, dict) or body.get("schema") != STATS_SCHEMA:
        return SystemPort(url, "error", f"/stats is not a {STATS_SCHEMA} document"), None
    return SystemPort(url, "ok"), body


def _zero_load() -> dict[str, Any]:
    return asdict(ModelLoad(0, 0, 0, 0.0, 0, 0.0, 0, None, None))


async def collect(
    store: KVStore,
    namespace: str | None = None,
    *,
    models: tuple[str, ...] = (),
    timeout: float = PROBE_TIMEOUT,
    session: aiohttp.ClientSession | None = None,
) -> ClusterStatus:
    """The cluster's status now: of ``namespace``, or of every namespace in the store when None;
    ``models`` keeps only those models (all when empty).

    :param session: the HTTP session to probe with (made and closed here when None).
    :raises DyntritonError: the store could not be listed (StoreUnavailableError...).
    """
    warnings: list[str] = []
    prefix = _ROOT if namespace is None else models_prefix(namespace).removesuffix("models/")
    cards: list[tuple[str, ModelCard]] = []
    worker_cards: dict[str, tuple[str, WorkerCard]] = {}
    frontend_cards: list[tuple[str, FrontendCard]] = []
    for entry in await store.list(prefix):
        ns, _, rest = entry.key[len(_ROOT) :].partition("/")
        kind, _, name = rest.partition("/")
        if not ns or not name:
            continue
        try:
            if kind == "models" and parse_card_key(ns, entry.key) is not None:
                cards.append((ns, ModelCard.from_json(entry.value)))
            elif kind == "workers":
                wcard = WorkerCard.from_json(entry.value)
                worker_cards[wcard.instance_id] = (ns, wcard)
            elif kind == "frontends":
                frontend_cards.append((ns, FrontendCard.from_json(entry.value)))
        except ConfigError as exc:
            warnings.append(f"ignored {entry.key}: {exc}")

    instance_ids = sorted({card.instance_id for _, card in cards} | set(worker_cards))
    urls = {iid: worker_cards[iid][1].system_url if iid in worker_cards else "" for iid in instance_ids}
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        probes = await asyncio.gather(*(_probe(session, urls[iid], timeout) for iid in instance_ids))
    finally:
        if own:
            await session.close()
    probed = dict(zip(instance_ids, probes, strict=True))

    now = time.time()
    hostname = socket.gethostname()
    frontends: list[FrontendEntry] = []
    silent_to: dict[str, list[str]] = {}
    for ns, fcard in sorted(frontend_cards, key=lambda item: (item[0], item[1].frontend_id)):
        age = max(now - fcard.updated, 0.0)
        stale = age > STALE_INTERVALS * fcard.interval
        if not stale:
            for iid in fcard.unresponsive:
                silent_to.setdefault(iid, []).append(fcard.frontend_id)
        frontends.append(
            FrontendEntry(
                frontend_id=fcard.frontend_id,
                host=fcard.host,
                pid=fcard.pid,
                local=fcard.host == hostname,
                grpc=fcard.grpc,
                http=fcard.http,
                age_seconds=round(age, 3),
                stale=stale,
                instances=fcard.instances,
                unresponsive=fcard.unresponsive,
                models={name: fcard.models[name] for name in sorted(fcard.models) if not models or name in models},
                namespace=ns,
            )
        )

    def worker_entry(ns: str, iid: str, model: str, card: ModelCard | None) -> WorkerEntry:
        wcard = worker_cards[iid][1] if iid in worker_cards else None
        system, stats = probed[iid]
        reported = silent_to.get(iid, [])
        if wcard is not None and wcard.state == "draining":
            state = "draining"
        elif system.status == "timeout" or reported:
            state = "unresponsive"
        else:
            state = "serving"
        load = None
        if stats is not None:
            load = dict(stats.get("models", {}).get(model) or _zero_load())
        facts = card.worker if card is not None else {}
        host = wcard.host if wcard is not None else str(facts.get("host", ""))
        return WorkerEntry(
            instance_id=iid,
            state=state,
            host=host,
            address=card.address if card is not None else (wcard.address if wcard else ""),
            transport=card.transport if card is not None else (wcard.transport if wcard else ""),
            pid=wcard.pid if wcard is not None else int(facts.get("pid", 0)),
            local=host == hostname,
            server_name=wcard.server_name if wcard is not None else str(facts.get("server_name", "")),
            server_version=wcard.server_version if wcard is not None else str(facts.get("server_version", "")),
            model_version=card.version if card is not None else "",
            config=_config_summary(card) if card is not None else None,
            system=system,
            load=load,
            unresponsive_to=reported,
            uptime_seconds=float(stats["uptime_seconds"]) if stats and "uptime_seconds" in stats else None,
            namespace=ns,
        )

    by_model: dict[tuple[str, str], dict[str, WorkerEntry]] = {}
    for ns, card in cards:
        by_model.setdefault((ns, card.model), {})[card.instance_id] = worker_entry(
            ns, card.instance_id, card.model, card
        )
    for iid, (ns, wcard) in worker_cards.items():
        for model in wcard.models:
            if iid not in by_model.get((ns, model), {}) and wcard.state == "draining":
                by_model.setdefault((ns, model), {})[iid] = worker_entry(ns, iid, model, None)
    served = {iid for workers in by_model.values() for iid in workers}
    idle = [worker_entry(worker_cards[iid][0], iid, "", None) for iid in sorted(worker_cards) if iid not in served]
    entries = [
        ModelEntry(
            name=name,
            versions=sorted({w.model_version for w in workers.values() if w.model_version}),
            workers=[workers[iid] for iid in sorted(workers)],
            namespace=ns,
        )
        for (ns, name), workers in sorted(by_model.items())
        if not models or name in models
    ]
    namespaces = {ns for ns, _ in cards} | {ns for ns, _ in worker_cards.values()} | {ns for ns, _ in frontend_cards}
    return ClusterStatus(
        schema=STATUS_SCHEMA,
        time=round(now, 3),
        store=store.name,
        namespaces=sorted(namespaces) if namespace is None else [namespace],
        probe_timeout=timeout,
        models=entries,
        frontends=frontends,
        workers_without_models=[] if models else idle,
        warnings=warnings,
    )
