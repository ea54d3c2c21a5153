"""The worker: runs a backend, publishes a model card per model under a lease, serves requests.

Lifecycle: ``start()`` starts the backend, loads the models, starts the
transport server and registers the cards; ``stop()`` drains: deregisters first
(so frontends stop routing here), lets in-flight requests finish, then stops the
backend and revokes the lease. If the lease is lost (store outage, long pause)
the worker grants a new one and registers again.

A backend that breaks beyond repair (:class:`~dynamo_triton.backend.FatalReporting`: a dead
Triton python stub) never ends the process itself: it reports, and the worker decides. It
withdraws its cards and stops taking requests, gives those in flight up to
:data:`BROKEN_DRAIN_TIMEOUT` s, then ends the process with ``EXIT_BACKEND_BROKEN`` (6) without
stopping the backend (a broken engine may hang on its way down; the backend's own process-exit
safeguards, such as the Triton backend's stub reaper, clean up) so that its supervisor starts a
new worker.

Datatypes: the worker reads requests with the process's dtype table
(``Plugins.dtype_table()``). A plugin datatype with a carrier (``FP8E4M3`` carried
as ``UINT8``) is relabelled to its carrier before the backend sees the request,
which only knows core types; the tensor's bytes are not touched. A datatype the
table does not know is rejected here with the known names, not passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from dynamo_triton.backend import Backend, FatalReporting, ModelInfo
from dynamo_triton.backoff import Backoff
from dynamo_triton.cli.exits import EXIT_BACKEND_BROKEN
from dynamo_triton.dtypes import DTypeTable, default_table
from dynamo_triton.errors import ConfigError, DyntritonError, InvalidRequestError, NoInstanceError
from dynamo_triton.kv import KVStore
from dynamo_triton.leases import LeaseKeeper
from dynamo_triton.runtime.cards import ModelCard, card_key
from dynamo_triton.runtime.pipeline import parse_infer_request
from dynamo_triton.runtime.service import INFER_ENDPOINT, STATISTICS_ENDPOINT
from dynamo_triton.runtime.shared_memory import host_identity
from dynamo_triton.runtime.tracing import WorkerTracing, follow
from dynamo_triton.runtime.worker_card import WorkerCard, published_host, worker_card_key
from dynamo_triton.runtime.worker_metrics import WorkerMetrics
from dynamo_triton.transport import Chunk, Transport, TransportRequest, TransportServer

__all__ = ["BROKEN_DRAIN_TIMEOUT", "Worker", "WorkerSettings"]

log = logging.getLogger(__name__)

#: Seconds a worker whose backend broke gives its requests in flight (and the store) before it exits.
BROKEN_DRAIN_TIMEOUT = 5.0


def _exit_process(code: int) -> None:
    """End the process now with ``code``: no interpreter shutdown, which a broken engine may hang."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or missing stream must not keep the process alive
            stream.flush()
    os._exit(code)


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker registers and serves.

    :param models: models to load; empty means every model in the repository.
    :param host: interface the transport server binds.
    :param port: port of the transport server (0: any free port).
    :param port_last: with ``port``, an inclusive range: the first port of ``port..port_last`` that
        is free is taken (None: ``port`` only).
    :param lease_ttl: seconds after which a dead worker's cards disappear.
    :param drain_timeout: seconds in-flight requests get on shutdown.
    :param model_control: ``none``: serve ``models`` (or the whole repository) from start to end;
        ``explicit`` (Triton's term): load only ``models`` at start, none when empty, and take load and
        unload requests from the store (``runtime/model_control.py``, docs/model-control.md).
    """

    namespace: str = "dynamo"
    models: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    port_last: int | None = None
    lease_ttl: float = 10.0
    drain_timeout: float = 30.0
    model_control: str = "none"


class Worker:
    """One worker instance (one instance id, one lease, one transport server).

    :param dtypes: the table requests are read with (default: the core table); pass
        ``Plugins.dtype_table()`` so plugin datatypes reach the backend as their carriers.
    :param exit_process: how the worker ends the process when its backend broke (tests pass their own).
    """

    def __init__(
        self,
        backend: Backend,
        store: KVStore,
        transport: Transport,
        settings: WorkerSettings,
        *,
        metrics: WorkerMetrics | None = None,
        dtypes: DTypeTable | None = None,
        exit_process: Callable[[int], None] = _exit_process,
    ):
        self.backend, self.store, self.transport, self.settings = backend, store, transport, settings
        self.metrics = metrics or WorkerMetrics()
        self.dtypes = dtypes or default_table()
        self._carried = self.dtypes.carried()
        self._fast = getattr(backend, "infer_wire", None)
        self._known = frozenset(self.dtypes.names())
        self.instance_id = uuid.uuid4().hex[:16]
        self.address = ""
        self.models: dict[str, ModelInfo] = {}
        self._server: TransportServer | None = None
        self._lease: LeaseKeeper | None = None
        self._registered = False
        self._draining = False
        self._reregister: asyncio.Task[None] | None = None
        #: ``(host, port)`` its system port listens on, set by whoever runs one (for its worker card).
        self.system: tuple[str, int] | None = None
        self._started = time.time()
        self._exit_process = exit_process
        #: Why the backend broke beyond repair (then the worker is on its way out), or None.
        self.broken: str | None = None
        self._ending: asyncio.Task[None] | None = None
        #: strips the frontends' trace context from requests; traces them when configured (launch does).
        self.tracing = WorkerTracing()

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the backend, load models, serve, register. Raises the backend's errors as they are."""
        await self.backend.start()
        if isinstance(self.backend, FatalReporting):
            self.backend.on_fatal(self._on_fatal)
        explicit = self.settings.model_control == "explicit"
        names = list(self.settings.models) or ([] if explicit else await self.backend.repository_index())
        if not names and not explicit:
            raise DyntritonError("the model repository holds no model to serve", status="FAILED_PRECONDITION")
        for name in names:
            self.models[name] = await self.backend.load_model(name)
        self.metrics.models_loaded.set(len(self.models))
        await self._listen()
        await self._register()
        log.debug("worker %s serving %s at %s", self.instance_id, ", ".join(sorted(self.models)), self.address)

    async def _listen(self) -> None:
        """Start the transport server on the first free port of the configured port or range.

        :raises ConfigError: no port of the range could be bound, naming the host, the range and the options.
        """
        host, first = self.settings.host, self.settings.port
        last = first if self.settings.port_last is None else self.settings.port_last
        failure: OSError | None = None
        for port in range(first, last + 1):
            server = self.transport.server(host, port)
            try:
                self.address = await server.start(self._handle)
            except OSError as exc:
                failure = exc
                continue
            self._server = server
            return
        ports = str(first) if first == last else f"{first}-{last}"
        reason = failure.strerror if failure is not None and failure.strerror else str(failure)
        raise ConfigError(
            f"the worker's {self.transport.name} server cannot listen on {host}:{ports}: {reason}",
            hint="pick another port or a wider range with --worker-port / DYN_WORKER_PORT (0 = any free port), "
            "or another interface with --worker-host / DYN_WORKER_HOST",
        )

    async def _register(self) -> None:
        self._lease = LeaseKeeper(self.store, self.settings.lease_ttl, on_lost=self._on_lease_lost)
        await self._lease.start()
        for info in self.models.values():
            await self.store.put(self._key(info.name), self._card(info).to_json(), lease=self._lease.lease_id)
        await self._put_worker_card("serving")
        self._registered = True

    def _on_lease_lost(self) -> None:
        if self._draining or (self._reregister is not None and not self._reregister.done()):
            return
        log.warning("worker %s lost its lease; registering again", self.instance_id)
        self._registered = False
        self._reregister = asyncio.get_running_loop().create_task(self._register_again())

    async def _register_again(self) -> None:
        backoff = Backoff(0.5)
        while not self._draining:
            try:
                if self._lease is not None:
                    await self._lease.close(revoke=False)
                await self._register()
                log.info("worker %s registered again", self.instance_id)
                return
            except DyntritonError as exc:
                log.warning("registering again failed (%s); retrying in %.1f s", exc, backoff.delay)
                await backoff.wait()

    async def stop(self) -> None:
        """Drain and stop: deregister, finish in-flight requests, stop the backend, revoke the lease."""
        await self._drain(self.settings.drain_timeout)
        await self.backend.stop()
        await self._revoke()

    async def _drain(self, grace: float) -> None:
        """Deregister (frontends stop routing here), then give requests in flight up to ``grace`` s."""
        self._draining = True
        if self._reregister is not None:
            self._reregister.cancel()
        if self._registered:
            for name in self.models:
                try:
                    await self.store.delete(self._key(name))
                except DyntritonError as exc:
                    log.warning("could not deregister %s (its lease will expire): %s", name, exc)
            self._registered = False
            try:
                await self._put_worker_card("draining")
            except DyntritonError as exc:
                log.debug("could not mark the worker card draining: %s", exc)
        if self._server is not None:
            await self._server.stop(grace=grace)

    async def _revoke(self) -> None:
        if self._lease is not None:
            try:
                await self._lease.close(revoke=True)
            except DyntritonError as exc:
                log.warning("could not revoke the lease (it will expire): %s", exc)

    def _on_fatal(self, reason: str) -> None:
        """The backend broke beyond repair: withdraw, drain, and end the process (see the module docstring)."""
        if self.broken is not None:
            return
        self.broken = reason
        log.error(
            "worker %s: %s; the backend cannot recover in-process: withdrawing this worker's cards, draining "
            "(up to %g s), then exiting with code %d so that its supervisor starts a new one",
            *(self.instance_id, reason, BROKEN_DRAIN_TIMEOUT, EXIT_BACKEND_BROKEN),
        )
        self._ending = asyncio.get_running_loop().create_task(self._end_broken(), name="dyntriton-worker-broken")

    async def _end_broken(self) -> None:
        try:
            async with asyncio.timeout(BROKEN_DRAIN_TIMEOUT):
                await self._drain(BROKEN_DRAIN_TIMEOUT / 2)
                await self._revoke()
        except Exception as exc:  # whatever went wrong, the process must still end
            log.warning("worker %s: draining after the backend broke: %s", self.instance_id, exc)
        finally:
            self._exit_process(EXIT_BACKEND_BROKEN)

    async def publish(self, info: ModelInfo) -> None:
        """Serve ``info``, a model the backend has just (re)loaded: its card is put now and on re-registration."""
        self.models[info.name] = info
        self.metrics.models_loaded.set(len(self.models))
        if self._registered and self._lease is not None:
            await self.store.put(self._key(info.name), self._card(info).to_json(), lease=self._lease.lease_id)
            await self._put_worker_card("serving")

    async def withdraw(self, name: str) -> None:
        """Stop announcing ``name``: its card is deleted (frontends stop routing here) before it is unloaded."""
        if self.models.pop(name, None) is None:
            return
        self.metrics.models_loaded.set(len(self.models))
        if self._registered:
            await self.store.delete(self._key(name))
            await self._put_worker_card("serving")

    async def health(self) -> tuple[bool, dict[str, object]]:
        """For the system port: healthy when registered and the backend is ready."""
        ready = self._registered and not self._draining and await self.backend.ready()
        return ready, {"instance_id": self.instance_id, "address": self.address, "models": sorted(self.models)}

    # -- serving ---------------------------------------------------------------------------------
    def _key(self, model: str) -> str:
        return card_key(self.settings.namespace, model, self.instance_id)

    async def _put_worker_card(self, state: str) -> None:
        """Put this worker's card (docs/status.md) under its lease."""
        if self._lease is None or self._lease.lease_id is None:
            return
        key = worker_card_key(self.settings.namespace, self.instance_id)
        await self.store.put(key, self.worker_card(state).to_json(), lease=self._lease.lease_id)

    def worker_card(self, state: str) -> WorkerCard:
        """What this worker says about itself: where its system port is, ``serving`` or ``draining``."""
        system_url = ""
        if self.system is not None:
            scheme, _, rest = self.address.partition("://")
            transport_host = rest.rpartition(":")[0].strip("[]") if scheme == "tcp" else ""
            host = published_host(self.system[0], transport_host or socket.gethostname())
            system_url = f"http://{host}:{self.system[1]}"
        name, version = self.backend.server_identity()
        return WorkerCard(
            instance_id=self.instance_id,
            state=state,
            address=self.address,
            transport=self.transport.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=self._started,
            system_url=system_url,
            models=sorted(self.models),
            server_name=name,
            server_version=version,
            lease_ttl=self.settings.lease_ttl,
        )

    def _card(self, info: ModelInfo) -> ModelCard:
        return ModelCard(
            model=info.name,
            version=info.version,
            instance_id=self.instance_id,
            address=self.address,
            transport=self.transport.name,
            decoupled=info.decoupled,
            config=json_format.MessageToDict(info.config, preserving_proto_field_name=True),
            metadata=json_format.MessageToDict(info.metadata, preserving_proto_field_name=True),
            worker={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.time(),
                "server_name": self.backend.server_identity()[0],
                "server_version": self.backend.server_identity()[1],
                "models": sorted(self.models),
                "lease_ttl": self.settings.lease_ttl,  # how long frontends wait for it after a store resync
                # Frontends of this host hand it shared-memory regions by reference (docs/shared-memory.md).
                "shm_host": host_identity(),
            },
        )

    async def _handle(self, request: TransportRequest) -> AsyncIterator[Chunk]:
        if request.endpoint == INFER_ENDPOINT:
            # A backend's fast path (``infer_wire``) serves plain requests from their bytes; None: not one.
            fast = self._fast(request.payload) if self._fast is not None and not self._draining else None
            if fast is not None:
                with self.metrics.track(fast[0]):
                    for chunk in await fast[1]:
                        yield chunk
                return
            async for chunk in self._infer(request.payload):
                yield chunk
        elif request.endpoint == STATISTICS_ENDPOINT:
            stats = await self.backend.statistics(bytes(request.payload).decode())
            yield stats.SerializeToString()
        else:
            raise InvalidRequestError(f"unknown worker endpoint {request.endpoint!r}")

    async def _infer(self, payload: bytes | memoryview) -> AsyncIterator[Chunk]:
        """Parse (a large request's tensors stay where they were received), relabel, run on the backend."""
        if self._draining:
            raise NoInstanceError("this worker is shutting down")
        request, raw_inputs = parse_infer_request(payload)
        trace = self.tracing.take(request) if request.parameters else None  # the frontend's trace context
        self._relabel(request)
        with self.metrics.track(request.model_name):
            stream = self.backend.infer_serialized(request, raw_inputs)
            async for chunk in stream if trace is None else follow(trace, stream):
                yield chunk

    def _relabel(self, request: service_pb2.ModelInferRequest) -> None:
        """Give every plugin-datatype input its carrier's datatype (a string field: no tensor byte is copied).

        :raises InvalidRequestError: an input's datatype is not in this worker's table.
        """
        for tensor in request.inputs:
            datatype = tensor.datatype
            carrier = self._carried.get(datatype)
            if carrier is not None:
                tensor.datatype = carrier
            elif datatype not in self._known:
                raise InvalidRequestError(
                    f"inference input '{tensor.name}': unknown datatype {datatype!r} on worker {self.instance_id}; "
                    f"available: {', '.join(sorted(self._known))}",
                    hint="load the plugin that registers it in every worker too, not only in the frontend "
                    "(install its distribution, or name its module in DYNTRITON_PLUGINS)",
                )
