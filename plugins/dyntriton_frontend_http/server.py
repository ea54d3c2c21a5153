"""HTTP frontend on aiohttp: operator endpoints now, routed so the KServe v2 REST API can grow here.

Routes: ``/health`` (200 when at least one model is servable, else 503), ``/live``,
``/metrics`` (Prometheus), and from KServe v2 REST: ``/v2``, ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]`` and ``.../ready``.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.frontend import FrontendSettings, InferenceService

__all__ = ["HttpFrontend"]

_HTTP_STATUS = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _error(exc: DyntritonError) -> web.Response:
    return _json({"error": exc.message}, _HTTP_STATUS.get(exc.status, 500))


class HttpFrontend:
    """The Frontend protocol (dynamo_triton.frontend) for HTTP."""

    def __init__(self, settings: FrontendSettings, service: InferenceService):
        self.settings, self.service = settings, service
        self.metrics = service.metrics
        self._runner: web.AppRunner | None = None
        self._port = settings.port

    @property
    def port(self) -> int:
        return self._port

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/live", self.live)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2/models/{name}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/ready", self.model_ready)
        app.router.add_get("/v2/models/{name}/versions/{version}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/versions/{version}/ready", self.model_ready)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"cannot listen for HTTP on {self.settings.host}:{self.settings.port}: {exc.strerror}",
                hint="pick another port with --http-port / DYN_HTTP_PORT (0 = any free port)",
            ) from exc
        self._port = self._runner.addresses[0][1]

    async def stop(self, *, grace: float = 5.0) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routes ----------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        models = [{"name": m.name, "version": m.version, "instances": m.instances} for m in self.service.models()]
        ready = self.service.ready()
        return _json({"status": "healthy" if ready else "unhealthy", "models": models}, 200 if ready else 503)

    async def live(self, _request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, _request: web.Request) -> web.Response:
        ready = self.service.ready()
        return _json({"ready": ready}, 200 if ready else 503)

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def server_metadata(self, _request: web.Request) -> web.Response:
        try:
            package_version = version("dynamo-triton")
        except PackageNotFoundError:
            package_version = "0"
        return _json({"name": "dyntriton", "version": package_version, "extensions": ["model_configuration"]})

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            served = self.service.model(request.match_info["name"], request.match_info.get("version", ""))
        except DyntritonError as exc:
            return _error(exc)
        return _json(json_format.MessageToDict(served.metadata, preserving_proto_field_name=True))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self.service.model(request.match_info["name"], request.match_info.get("version", ""))
        except DyntritonError as exc:
            return _error(exc)
        return _json({"ready": True})
