"""Discovery: watch the store's model cards and keep a live table of model -> instances.

The table follows the store: a card put adds (or replaces) an instance, a card
deleted (its worker deregistered or its lease expired) removes it. The router
may also drop an instance at once when its connection fails, ahead of the lease.

When the watch ends (the store went away, or cannot resume it: etcd compacted
its history or was wiped, a file store's folder was replaced), the table re-lists
the store and is rebuilt from that listing, logging what changed; the workers,
whose leases the store no longer knows, put their cards again. Until they do, an
instance the listing lacks stays routable for one lease TTL (its card says how
long; :data:`DEFAULT_GRACE` otherwise), so a wiped store costs no request: one
that really died meanwhile goes when its connection fails, or at the end of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.backoff import Backoff
from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.kv import EventKind, KVEntry, KVStore
from dynamo_triton.runtime.cards import ModelCard, models_prefix, parse_card_key

__all__ = ["DEFAULT_GRACE", "Instance", "ModelTable"]

log = logging.getLogger(__name__)

#: Seconds an instance missing from a re-list stays routable when its card does not give its lease TTL.
DEFAULT_GRACE = 10.0


@dataclass(eq=False)
class Instance:
    """One worker instance serving one model, as the router sees it.

    :param outstanding: requests sent and not yet finished (for least-outstanding).
    :param missing_until: set when a re-list of the store lacked this card: the loop time at
        which it leaves the table unless its worker puts the card again first.
    """

    card: ModelCard
    config: model_config_pb2.ModelConfig
    metadata: service_pb2.ModelMetadataResponse
    outstanding: int = 0
    key: str = ""
    missing_until: float | None = None

    @property
    def instance_id(self) -> str:
        return self.card.instance_id

    @property
    def address(self) -> str:
        return self.card.address


@dataclass
class _Model:
    instances: dict[str, Instance] = field(default_factory=dict)


def _instance_from(entry_key: str, raw: bytes) -> Instance:
    card = ModelCard.from_json(raw)
    try:
        config = json_format.ParseDict(card.config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        metadata = json_format.ParseDict(card.metadata, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ConfigError(f"model card {entry_key} has a config or metadata that does not parse: {exc}") from exc
    return Instance(card=card, config=config, metadata=metadata, key=entry_key)


class ModelTable:
    """The live routing table of one namespace, fed by a store watch.

    Listeners added with :meth:`subscribe` are called (no arguments) after every change.
    """

    def __init__(self, store: KVStore, namespace: str):
        self._store, self._namespace = store, namespace
        self._prefix = models_prefix(namespace)
        self._models: dict[str, _Model] = {}
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None

    # -- reading ---------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        """Models with at least one live instance, sorted."""
        return sorted(name for name, model in self._models.items() if model.instances)

    def instances(self, model: str) -> list[Instance]:
        """Live instances of ``model`` (empty if none)."""
        entry = self._models.get(model)
        return list(entry.instances.values()) if entry else []

    def instance(self, model: str, instance_id: str) -> Instance | None:
        """The live instance ``instance_id`` of ``model``, or None if it is gone."""
        entry = self._models.get(model)
        return entry.instances.get(instance_id) if entry else None

    def all_instances(self) -> list[Instance]:
        """Every live instance of every model."""
        return [inst for model in self._models.values() for inst in model.instances.values()]

    # -- changing --------------------------------------------------------------------------------
    def forget(self, instance: Instance) -> None:
        """Drop ``instance`` now (its connection failed); a later card put brings it back."""
        model = self._models.get(instance.card.model)
        if model and model.instances.get(instance.instance_id) is instance:
            del model.instances[instance.instance_id]
            log.warning(
                "instance %s of model %r at %s removed from routing (connection failed)",
                instance.instance_id,
                instance.card.model,
                instance.address,
            )
            self._changed()

    def _apply_put(self, key: str, value: bytes, *, previous: Instance | None = None) -> None:
        """Add or replace the instance of the card at ``key``; ``previous``: its entry before a re-list."""
        parsed = parse_card_key(self._namespace, key)
        if parsed is None:
            return
        try:
            instance = _instance_from(key, value)
        except ConfigError as exc:
            log.warning("ignoring model card at %s: %s", key, exc)
            return
        model = self._models.setdefault(parsed[0], _Model())
        previous = model.instances.get(parsed[1]) or previous
        if previous is not None:
            instance.outstanding = previous.outstanding  # requests in flight there still finish
        model.instances[parsed[1]] = instance
        if previous is None:
            log.info("model %r: instance %s at %s is live", parsed[0], parsed[1], instance.address)
        self._changed()

    def _apply_delete(self, key: str) -> None:
        parsed = parse_card_key(self._namespace, key)
        if parsed is None:
            return
        model = self._models.get(parsed[0])
        if model and model.instances.pop(parsed[1], None) is not None:
            log.info("model %r: instance %s left", parsed[0], parsed[1])
            self._changed()

    def _reset(self, snapshot: list[KVEntry], *, resync: bool = False) -> None:
        """Rebuild the table from ``snapshot``; ``resync``: after a watch ended, so say what changed.

        On a resync, instances the snapshot lacks are kept until their grace ends (module docstring).
        """
        before = {(inst.card.model, inst.instance_id): inst for inst in self.all_instances()}
        self._models.clear()
        for entry in snapshot:
            parsed = parse_card_key(self._namespace, entry.key)
            self._apply_put(entry.key, entry.value, previous=before.get(parsed) if parsed else None)
        missing = {key: inst for key, inst in before.items() if self.instance(*key) is None} if resync else {}
        now = asyncio.get_running_loop().time()
        for (model, instance_id), inst in missing.items():
            if inst.missing_until is None:
                inst.missing_until = now + float(inst.card.worker.get("lease_ttl") or DEFAULT_GRACE)
            self._models.setdefault(model, _Model()).instances[instance_id] = inst
        self._changed()
        if resync:
            after = {(inst.card.model, inst.instance_id) for inst in self.all_instances()}
            log.warning(
                "re-listed %s from the %s store: the routing table was rebuilt with %d instance(s) of %d model(s) "
                "(%d new, %d missing from the store, routed to until their workers register again or their "
                "lease time passes)",
                self._prefix,
                self._store.name,
                len(after),
                len(self.model_names()),
                len(after - before.keys()),
                len(missing),
            )
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        """Wake up when the first instance missing from a re-list runs out of grace."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        ends = [inst.missing_until for inst in self.all_instances() if inst.missing_until is not None]
        if ends:
            self._expiry = asyncio.get_running_loop().call_at(min(ends), self._expire)

    def _expire(self) -> None:
        self._expiry = None
        now = asyncio.get_running_loop().time()
        for inst in self.all_instances():
            if inst.missing_until is not None and inst.missing_until <= now:
                model = self._models[inst.card.model]
                del model.instances[inst.instance_id]
                log.warning(
                    "model %r: instance %s at %s did not register again after the store was re-listed; "
                    "removed from routing",
                    inst.card.model,
                    inst.instance_id,
                    inst.address,
                )
                self._changed()
        self._schedule_expiry()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the table."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, *, sync_timeout: float = 10.0) -> None:
        """Start watching; returns once the initial snapshot is in the table."""
        self._task = asyncio.create_task(self._follow(), name=f"dyntriton-discovery-{self._namespace}")
        waiter = asyncio.ensure_future(self._synced.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=sync_timeout, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                self._task.result()  # raises the store's error (e.g. StoreUnavailableError)
            raise DyntritonError(
                f"discovery did not get the list of models from the {self._store.name!r} store "
                f"within {sync_timeout:g} s",
                hint="check that the store is reachable (see `dyntriton store ls`)",
                status="UNAVAILABLE",
            )

    async def _follow(self) -> None:
        backoff = Backoff(0.2)
        while True:
            try:
                async with self._store.watch(self._prefix) as watch:
                    self._reset(watch.snapshot, resync=self._synced.is_set())
                    self._synced.set()
                    backoff.reset()
                    async for event in watch:
                        if event.kind is EventKind.PUT and event.value is not None:
                            self._apply_put(event.key, event.value)
                        else:
                            self._apply_delete(event.key)
            except asyncio.CancelledError:
                raise
            except DyntritonError as exc:
                if not self._synced.is_set():
                    raise
                log.warning("watch on %s ended (%s); re-listing in %.1f s", self._prefix, exc, backoff.delay)
            except Exception:
                log.exception("watch on %s failed; retrying in %.1f s", self._prefix, backoff.delay)
            await backoff.wait()

    async def stop(self) -> None:
        """Stop watching."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
