"""A worker's system HTTP port (``DYN_SYSTEM_PORT``): ``/health``, ``/live`` and ``/metrics``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dynamo_triton.errors import ConfigError

__all__ = ["SystemServer"]

log = logging.getLogger(__name__)


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
    ):
        self._host, self._port = host, port
        self._health, self._registry = health, registry
        self._more_metrics = more_metrics
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

    async def start(self) -> None:
        """Bind and serve; a taken port raises ConfigError naming it."""
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/live", self._get_live)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port} for the system port: {exc.strerror}",
                hint="pick another port with --system-port / DYN_SYSTEM_PORT (0 = any free port), or another "
                "interface with --system-host / DYN_SYSTEM_HOST",
            ) from exc
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
