"""Compose plugins into running pieces: a frontend stack and a worker stack, plus signal handling.

The CLI commands (and tests) call these; they never reach into plugins directly
but through the :class:`~dynamo_triton.plugins.Plugins` facade, by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from dynamo_triton.backend import BackendSettings
from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import Frontend, FrontendSettings
from dynamo_triton.kv import KVStore
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.admission import AdmissionSettings
from dynamo_triton.runtime.cluster_repository import ClusterRepository
from dynamo_triton.runtime.cluster_settings import ClusterSettings, SettingsFollower, apply_to_python_logging
from dynamo_triton.runtime.cluster_statistics import ModelStatisticsCollector, StatisticsService, refresh_statistics
from dynamo_triton.runtime.discovery import ModelTable
from dynamo_triton.runtime.frontend_card import publish_frontend
from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
from dynamo_triton.runtime.model_control import ModelController
from dynamo_triton.runtime.server_settings import LogSettings
from dynamo_triton.runtime.service import RoutingService
from dynamo_triton.runtime.shared_memory import SharedMemoryRegistry
from dynamo_triton.runtime.system_server import SystemServer
from dynamo_triton.runtime.tracing import TraceConfig, WorkerTracing
from dynamo_triton.runtime.worker import Worker, WorkerSettings
from dynamo_triton.transport import TransportSettings

__all__ = [
    "FrontendConfig",
    "FrontendStack",
    "Shutdown",
    "WorkerStack",
    "start_frontend",
    "start_worker",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontendConfig:
    """Everything a frontend stack needs.

    :param frontends: ``(name, settings)`` of every frontend plugin to start, in order; each
        ``settings`` is that plugin's settings (a :class:`FrontendSettings`, port 0: a free port).
        A frontend whose port is below 0 is not started (``--http-port -1``).
    :param router: the router plugin's name; ``router_settings`` its settings (None: its defaults).
    :param admission: admission control (``--max-inflight``, ``--max-queue``).
    :param transport: settings for the transport clients that reach the workers (TLS, token, heartbeat);
        ``transports`` the settings built for each transport plugin by name, used when a worker's
        card names that transport (``transport`` otherwise).
    """

    namespace: str = "dynamo"
    frontends: tuple[tuple[str, FrontendSettings], ...] = ()
    router: str = "least-outstanding"
    router_settings: Any = None
    transport: TransportSettings = field(default_factory=TransportSettings)
    transports: Mapping[str, TransportSettings] = field(default_factory=dict)
    #: the workers' Triton log verbosity at start (``--log-verbose``): what ``LogSettings`` answers before an update
    log_verbose: int = 0
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    #: OpenTelemetry tracing at start (``--trace-config``); the trace extension steers it afterwards
    trace: TraceConfig = field(default_factory=TraceConfig)

    def transport_for(self, name: str) -> TransportSettings:
        """The settings for transport ``name``'s clients."""
        return self.transports.get(name, self.transport)


@dataclass
class FrontendStack:
    """A running discovery table, routing service and protocol frontends."""

    table: ModelTable
    service: RoutingService
    frontends: list[tuple[str, Frontend]]
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def frontend(self, name: str) -> Frontend:
        """The running frontend ``name``; KeyError names the ones running."""
        for running, frontend in self.frontends:
            if running == name:
                return frontend
        raise KeyError(f"frontend {name!r} is not running (running: {', '.join(n for n, _ in self.frontends)})")

    async def stop(self) -> None:
        """Stop the background refresh, drain the frontends, then stop discovery and transport clients.

        Every frontend stops at once: no port accepts while another drains its requests in flight.
        """
        for task in self.background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(frontend.stop() for _, frontend in self.frontends), return_exceptions=True)
        await self.table.stop()
        await self.service.close()
        await asyncio.to_thread(self.service.tracing.shutdown)  # flush the spans still queued


async def start_frontend(plugins: Plugins, store: KVStore, config: FrontendConfig) -> FrontendStack:
    """Start discovery and the frontends of ``config`` over ``store``.

    The frontends' ``/metrics`` carry per-model queue and compute time summed over the workers
    (``dyntriton_model_*``), refreshed every few seconds; ModelStatistics never decreases.
    :raises ConfigError: no frontend to start.
    """
    chosen = [(name, settings) for name, settings in config.frontends if settings.port >= 0]
    for name, settings in config.frontends:
        if settings.port < 0:
            log.info("frontend %s not started: its port is %d", name, settings.port)
    if not chosen:
        raise ConfigError(
            "no frontend to start", hint="name one with --frontend (see `dyntriton plugins list`) on a port >= 0"
        )
    table = ModelTable(store, config.namespace)
    metrics = FrontendMetrics()
    service = StatisticsService(
        table,
        plugins.router(config.router, config.router_settings),
        lambda name: plugins.transport(name, config.transport_for(name)),
        metrics=metrics,
        dtypes=plugins.dtype_table(),
        admission=config.admission,
    )
    service.repository = repository = ClusterRepository(store, config.namespace, table)
    service.unloaded = repository.unloaded  # a model unloaded on purpose is answered as such
    service.settings = ClusterSettings(  # type: ignore[attr-defined]  # the logging and trace extensions
        store,
        config.namespace,
        initial_log=_initial_log(config.log_verbose),
        model_ready=lambda name: any(model.name == name for model in service.models()),
        initial_trace=config.trace.as_start(),
        trace_applied=service.tracing.apply,
    )
    service.tracing.configure(config.trace)
    service.shared_memory = SharedMemoryRegistry(store, config.namespace)
    collector = ModelStatisticsCollector()
    metrics.registry.register(collector)
    await table.start()
    made: list[tuple[str, Frontend]] = []
    try:
        for name, settings in chosen:
            made.append((name, plugins.frontend(name, settings, service)))
        # Every port bound before any answers, so a taken one fails before any call: first the frontends
        # that can bind without serving (``bind()``), then those that bind and serve in one step, then the
        # first ones serve.
        two_step = [frontend for _, frontend in made if getattr(frontend, "bind", None) is not None]
        for frontend in two_step:
            await frontend.bind()  # type: ignore[attr-defined]
        for frontend in [frontend for _, frontend in made if frontend not in two_step] + two_step:
            await frontend.start()
    except BaseException:
        await FrontendStack(table, service, made).stop()
        raise
    refresh = asyncio.create_task(refresh_statistics(service, collector), name="dyntriton-statistics")
    follower = SettingsFollower(
        store, config.namespace, apply_to_python_logging, trace=(config.trace.as_start(), service.tracing.apply)
    )
    following = await follower.start()
    card = publish_frontend(store, config, service, table, made)  # for `dyntriton status` and `top`
    regions = asyncio.create_task(service.shared_memory.run(), name="dyntriton-shared-memory")
    return FrontendStack(table, service, made, [refresh, following, card, regions])


def _initial_log(verbose: int) -> LogSettings:
    """The embedded Triton's log flags as a worker sets them at start (info only when verbose)."""
    return LogSettings(log_info=verbose > 0, log_verbose_level=verbose)


@dataclass
class WorkerStack:
    """A running worker and its system HTTP server."""

    worker: Worker
    system: SystemServer | None
    control: ModelController | None = None
    settings: SettingsFollower | None = None

    async def stop(self) -> None:
        """Stop model control, drain the worker, then stop the system port."""
        try:
            if self.settings is not None:
                await self.settings.stop()
            if self.control is not None:
                await self.control.stop()
            await self.worker.stop()
            await asyncio.to_thread(self.worker.tracing.shutdown)  # flush the spans still queued
        finally:
            if self.system is not None:
                await self.system.stop()


async def start_worker(
    plugins: Plugins,
    store: KVStore,
    *,
    backend: str,
    backend_settings: BackendSettings,
    transport: str,
    settings: WorkerSettings,
    system_host: str = "127.0.0.1",
    system_port: int | None = 8081,
    transport_settings: TransportSettings | None = None,
    system_port_fallback: bool = False,
    trace: TraceConfig | None = None,
) -> WorkerStack:
    """Start a backend-backed worker registering in ``store``; ``system_port=None`` serves no system port.

    With ``system_port_fallback`` a taken ``system_port`` is replaced by any free port (with a warning):
    for the default port, which a second worker on the host would otherwise fail on.

    ``transport_settings`` (TLS, token) protect the worker's transport server. ``trace``: where the
    spans of requests a frontend traced go (``--trace-config``; without it they are only stripped).

    The system port's ``/metrics`` carries the worker's metrics and, when the backend has a
    ``metrics_text()`` coroutine, the embedded server's own (Triton's ``nv_*`` families).
    """
    engine = plugins.backend(backend, backend_settings)
    worker = Worker(
        engine, store, plugins.transport(transport, transport_settings), settings, dtypes=plugins.dtype_table()
    )
    if trace is not None and trace.url:
        worker.tracing = WorkerTracing(trace)
    system = None
    if system_port is not None:
        system = SystemServer(
            system_host,
            system_port,
            health=worker.health,
            registry=worker.metrics.registry,
            more_metrics=getattr(engine, "metrics_text", None),
        )
        try:
            await system.start()
        except ConfigError:
            if not system_port_fallback or not system_port:
                raise
            log.warning("system port %d is taken (another worker on this host?): using any free port", system_port)
            system = SystemServer(
                system_host,
                0,
                health=worker.health,
                registry=worker.metrics.registry,
                more_metrics=getattr(engine, "metrics_text", None),
            )
            await system.start()
        worker.system = (system_host, system.port)  # named in its worker card, for `dyntriton status`
    control = ModelController(worker, explicit=settings.model_control == "explicit")
    follower = SettingsFollower(store, settings.namespace, partial(_apply_log_settings, engine))
    try:
        await worker.start()
        await control.start()
        await follower.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await control.stop()
        with contextlib.suppress(Exception):
            await worker.stop()
        if system is not None:
            await system.stop()
        raise
    return WorkerStack(worker, system, control, follower)


def _apply_log_settings(engine: Any, settings: LogSettings) -> None:
    """The cluster's log settings in a worker: its Python log level, and its backend's when it has them."""
    apply_to_python_logging(settings)
    apply = getattr(engine, "apply_log_settings", None)
    if apply is not None:
        apply(settings)


class Shutdown:
    """SIGINT/SIGTERM handling for a long-running command, installed before anything starts.

    A signal during start-up cancels the task that created this object (start-up
    code cleans up in its ``finally`` blocks); after :meth:`started`, a signal only
    wakes :meth:`wait`, so the command drains in order.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._event = asyncio.Event()
        self._task = asyncio.current_task()
        self._starting = True
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        first = self.signal_name is None
        self.signal_name = sig.name
        self._event.set()
        if first and self._starting and self._task is not None:
            log.info("%s during start-up: stopping", sig.name)
            self._task.cancel()

    def started(self) -> None:
        """Start-up is over: from now on a signal asks for an orderly stop."""
        self._starting = False

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> str:
        """Wait for SIGINT or SIGTERM; returns the signal's name."""
        await self._event.wait()
        return self.signal_name or "signal"

    def close(self) -> None:
        """Restore default signal handling."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.remove_signal_handler(sig)
