"""A worker's system HTTP port (``DYN_SYSTEM_PORT``): ``/health``, ``/live``, ``/metrics`` and ``/stats``.

``/stats`` is the machine-readable load of the last minute that ``dyntriton status`` and
``top`` read (docs/status.md): per model, requests in flight, cumulative totals, and over the
window requests per second, errors, p50 and p99 latency (see ``metrics_window.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dynamo_triton.errors import ConfigError
from dynamo_triton.runtime.metrics_window import WORKER_FAMILIES, Families, MetricsWindow

__all__ = ["STATS_SCHEMA", "SystemServer"]

log = logging.getLogger(__name__)

#: The ``schema`` of a ``/stats`` answer (docs/status.md); it only grows.
STATS_SCHEMA = "dyntriton.worker-stats/v1"


class SystemServer:
    """Serves health and Prometheus metrics for one process.

    :param health: coroutine returning ``(healthy, details)``; ``/health`` answers 200 or 503 with details as JSON.
    :param registry: the Prometheus registry ``/metrics`` exposes.
    :param more_metrics: coroutine returning more Prometheus text appended to ``/metrics`` (the embedded
        server's own metrics, e.g. Triton's ``nv_*`` families); a failure is logged and leaves them out.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], Awaitable[tuple[bool, dict[str, object]]]],
        registry: CollectorRegistry,
        more_metrics: Callable[[], Awaitable[str]] | None = None,
        families: Families | None = WORKER_FAMILIES,
    ):
        self._host, self._port = host, port
        self._health, self._registry = health, registry
        self._more_metrics = more_metrics
        self._window = MetricsWindow(registry, families) if families is not None else None
        self._sampler: asyncio.Task[None] | None = None
        self._started = time.time()
        self._runner: web.AppRunner | None = None
        self.port = port

    async def _get_health(self, _request: web.Request) -> web.Response:
        healthy, details = await self._health()
        body = {"status": "healthy" if healthy else "unhealthy", **details}
        return web.Response(status=200 if healthy else 503, text=json.dumps(body), content_type="application/json")

    async def _get_live(self, _request: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"status": "live"}), content_type="application/json")

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        if self._more_metrics is not None:
            try:
                more = await self._more_metrics()
            except Exception as exc:  # the process's own metrics must still be served
                log.warning("could not read the backend's metrics for /metrics: %s", exc)
            else:
                body += more.encode() if more.endswith("\n") or not more else (more + "\n").encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_stats(self, _request: web.Request) -> web.Response:
        assert self._window is not None
        body = {
            "schema": STATS_SCHEMA,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self._started, 3),
            "span_seconds": self._window.span,
            "models": {model: asdict(load) for model, load in self._window.summary().items()},
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def start(self) -> None:
        """Bind and serve; a taken port raises ConfigError naming it."""
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/live", self._get_live)
        app.router.add_get("/metrics", self._get_metrics)
        if self._window is not None:
            app.router.add_get("/stats", self._get_stats)
            self._sampler = asyncio.create_task(self._window.run(), name="dyntriton-stats-window")
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            await self._stop_sampler()
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port} for the system port: {exc.strerror}",
                hint="pick another port with --system-port / DYN_SYSTEM_PORT (0 = any free port), or another "
                "interface with --system-host / DYN_SYSTEM_HOST",
            ) from exc
        self.port = self._runner.addresses[0][1]

    async def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failed sampler must not fail stop
                await self._sampler
            self._sampler = None

    async def stop(self) -> None:
        """Stop serving."""
        await self._stop_sampler()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
