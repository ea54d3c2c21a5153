"""Frontend cards: each frontend process says where it listens, how busy it is, which workers it finds silent.

A frontend puts its card at::

    dyntriton/v1/{namespace}/frontends/{frontend_id}

under a lease of its own (:data:`LEASE_TTL` seconds), so the card disappears when the process
dies, and puts it again every :data:`INTERVAL` seconds with its load over the last minute
(requests per second, errors, p50/p99 latency, in flight, per model: see ``metrics_window.py``)
and the instances its transport reports unresponsive (heartbeats unanswered) — at once when that
set changes. ``dyntriton status`` and ``top`` read these cards. Schema
``dyntriton.frontend-card/v1`` (docs/status.md); it only grows.

Publishing never stops a frontend: store failures are logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.kv import KVStore
from dynamo_triton.leases import LeaseKeeper
from dynamo_triton.runtime.cards import models_prefix
from dynamo_triton.runtime.metrics_window import FRONTEND_FAMILIES, MetricsWindow
from dynamo_triton.runtime.worker_card import published_host

if TYPE_CHECKING:
    from dynamo_triton.frontend import Frontend
    from dynamo_triton.runtime.discovery import ModelTable
    from dynamo_triton.runtime.launch import FrontendConfig
    from dynamo_triton.runtime.service import RoutingService

__all__ = [
    "FRONTEND_CARD_SCHEMA",
    "INTERVAL",
    "LEASE_TTL",
    "FrontendCard",
    "FrontendPublisher",
    "frontend_card_key",
    "frontends_prefix",
    "publish_frontend",
]

log = logging.getLogger(__name__)

FRONTEND_CARD_SCHEMA = "dyntriton.frontend-card/v1"

#: Seconds between two puts of a frontend's card (its load is at most this old).
INTERVAL = 2.0

#: Seconds the card outlives its frontend process.
LEASE_TTL = 6.0

#: Seconds between two looks at which workers the transport finds unresponsive.
_LIVENESS_POLL = 0.25


def frontends_prefix(namespace: str) -> str:
    """The prefix of every frontend card of ``namespace`` (ends with ``/``)."""
    return models_prefix(namespace).removesuffix("models/") + "frontends/"


def frontend_card_key(namespace: str, frontend_id: str) -> str:
    """The store key of one frontend's card."""
    return frontends_prefix(namespace) + frontend_id


@dataclass(frozen=True)
class FrontendCard:
    """One frontend process's announcement of itself.

    :param grpc: ``host:port`` of its KServe gRPC port (the ``kserve-grpc`` frontend), "" when it serves none.
    :param http: ``host:port`` of its HTTP port (the ``http`` frontend), "" when it serves none.
    :param listeners: ``host:port`` of every frontend it runs, by frontend plugin name (``--frontend``).
    :param updated: wall-clock time of this put; a card older than a few ``interval`` is stale.
    :param models: per model, its load as :class:`~dynamo_triton.runtime.metrics_window.ModelLoad` fields.
    :param instances: worker instances in its routing table.
    :param unresponsive: instance ids its transport reports unresponsive.
    """

    frontend_id: str
    host: str
    pid: int
    started: float
    updated: float
    interval: float
    grpc: str
    http: str
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    instances: int = 0
    unresponsive: list[str] = field(default_factory=list)
    listeners: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialize with the schema tag, keys sorted, UTF-8."""
        return json.dumps({"schema": FRONTEND_CARD_SCHEMA, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> FrontendCard:
        """Parse a card; raises ConfigError saying what is wrong with it."""
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"frontend card is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("schema") != FRONTEND_CARD_SCHEMA:
            schema = body.get("schema") if isinstance(body, dict) else None
            raise ConfigError(f"frontend card schema is {schema!r}, expected {FRONTEND_CARD_SCHEMA!r}")
        try:
            return cls(
                frontend_id=str(body["frontend_id"]),
                host=str(body.get("host", "")),
                pid=int(body.get("pid", 0)),
                started=float(body.get("started", 0.0)),
                updated=float(body["updated"]),
                interval=float(body.get("interval", INTERVAL)),
                grpc=str(body.get("grpc", "")),
                http=str(body.get("http", "")),
                models={str(k): dict(v) for k, v in dict(body.get("models", {})).items()},
                instances=int(body.get("instances", 0)),
                unresponsive=[str(i) for i in body.get("unresponsive", [])],
                listeners={str(k): str(v) for k, v in dict(body.get("listeners", {})).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"frontend card is missing or has a bad field: {exc}") from exc


class FrontendPublisher:
    """Keeps one frontend's card in the store while :meth:`run` runs; deletes it when cancelled.

    :param grpc: ``host:port`` of the gRPC port; ``http``: of the HTTP port, or "".
    :param listeners: ``host:port`` of every frontend, by frontend plugin name.
    """

    def __init__(
        self,
        store: KVStore,
        namespace: str,
        service: RoutingService,
        table: ModelTable,
        *,
        grpc: str,
        http: str,
        listeners: dict[str, str] | None = None,
        interval: float = INTERVAL,
        lease_ttl: float = LEASE_TTL,
    ):
        self._store, self._service, self._table = store, service, table
        self._listeners = dict(listeners or {})
        self._grpc, self._http, self.interval, self._ttl = grpc, http, interval, lease_ttl
        self.frontend_id = uuid.uuid4().hex[:16]
        self.key = frontend_card_key(namespace, self.frontend_id)
        self._window = MetricsWindow(service.metrics.registry, FRONTEND_FAMILIES)
        self._started = time.time()
        self._lease: LeaseKeeper | None = None

    def unresponsive(self) -> list[str]:
        """Instance ids the transport reports unresponsive now, sorted."""
        return sorted({inst.instance_id for inst in self._table.all_instances() if self._service.unresponsive(inst)})

    def card(self) -> FrontendCard:
        """The card as of now."""
        return FrontendCard(
            frontend_id=self.frontend_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self._started,
            updated=time.time(),
            interval=self.interval,
            grpc=self._grpc,
            http=self._http,
            models={model: asdict(load) for model, load in self._window.summary().items()},
            instances=len(self._table.all_instances()),
            unresponsive=self.unresponsive(),
            listeners=self._listeners,
        )

    async def _put(self) -> None:
        if self._lease is None or self._lease.lost.is_set():
            if self._lease is not None:
                await self._lease.close(revoke=False)
                self._lease = None
            lease = LeaseKeeper(self._store, self._ttl)
            await lease.start()
            self._lease = lease
        await self._store.put(self.key, self.card().to_json(), lease=self._lease.lease_id)

    async def run(self) -> None:
        """Put the card every ``interval`` (and when the unresponsive set changes) until cancelled."""
        loop = asyncio.get_running_loop()
        sampled = loop.time()
        try:
            while True:
                try:
                    await self._put()
                except DyntritonError as exc:
                    log.warning("could not publish this frontend's card in the %s store: %s", self._store.name, exc)
                except Exception:  # never let the card take the frontend down, nor its stop
                    log.exception("could not publish this frontend's card; retrying in %.1f s", self.interval)
                published, due = self.unresponsive(), loop.time() + self.interval
                while loop.time() < due:
                    if loop.time() - sampled >= self._window.interval:
                        self._window.sample()
                        sampled = loop.time()
                    await asyncio.sleep(min(_LIVENESS_POLL, max(due - loop.time(), 0)))
                    if self.unresponsive() != published:
                        break
        finally:
            await self._withdraw()

    async def _withdraw(self) -> None:
        """Delete the card and end its lease, without waiting long on a store that is gone."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with contextlib.suppress(Exception):  # the lease expires anyway
            async with asyncio.timeout(2.0):
                await self._store.delete(self.key)
                await lease.close(revoke=True)
        with contextlib.suppress(Exception):
            await lease.close(revoke=False)


def publish_frontend(
    store: KVStore,
    config: FrontendConfig,
    service: RoutingService,
    table: ModelTable,
    frontends: list[tuple[str, Frontend]],
) -> asyncio.Task[None]:
    """Start publishing a started frontend process's card; cancel the task to withdraw it.

    :param frontends: ``(name, frontend)`` of every running frontend (``FrontendStack.frontends``).
    """
    fallback = socket.gethostname()
    hosts = {name: settings.host for name, settings in config.frontends}
    listeners = {name: f"{published_host(hosts.get(name, ''), fallback)}:{f.port}" for name, f in frontends}
    # The v1 schema's two fields, kept for its readers: `listeners` has every frontend, whatever its name.
    grpc_at, http_at = listeners.get("kserve-grpc", ""), listeners.get("http", "")
    publisher = FrontendPublisher(
        store, config.namespace, service, table, grpc=grpc_at, http=http_at, listeners=listeners
    )
    return asyncio.create_task(publisher.run(), name="dyntriton-frontend-card")
