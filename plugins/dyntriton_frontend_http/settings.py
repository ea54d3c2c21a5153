"""Triton's logging (``/v2/logging``) and trace (``/v2[/models/{m}]/trace/setting``) extensions over REST.

The rules, the store record and who applies them are the core's (:mod:`dynamo_triton.runtime.cluster_settings`);
these handlers only turn HTTP into its calls and its answers into Triton's JSON.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from dynamo_triton.errors import DyntritonError
from dynamo_triton.runtime.cluster_settings import ClusterSettings
from dyntriton_frontend_http.responses import error_response, json_response

__all__ = ["SettingsRoutes"]

_MODEL = "/v2/models/{name}"


class SettingsRoutes:
    """Handlers over the cluster's settings; ``read_body`` reads a request body as :class:`RestRoutes` does."""

    def __init__(self, settings: ClusterSettings, read_body: Any):
        self.settings, self._read_body = settings, read_body

    def add_to(self, app: web.Application) -> None:
        for method in ("GET", "POST"):
            app.router.add_route(method, "/v2/logging", self.logging)
            app.router.add_route(method, "/v2/trace/setting", self.trace)
            app.router.add_route(method, _MODEL + "/trace/setting", self.trace)  # no versioned form, as Triton

    async def _json(self, request: web.Request) -> Any:
        body = await self._read_body(request)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # Triton: 500, its parser's words
            raise DyntritonError(f"failed to parse the request JSON buffer: {exc}", status="INTERNAL") from None

    async def logging(self, request: web.Request) -> web.Response:
        try:
            if request.method == "POST":
                current = await self.settings.update_log(json=await self._json(request))
            else:
                current = await self.settings.log_settings()
        except DyntritonError as exc:
            return error_response(exc)
        return json_response(current.as_dict())

    async def trace(self, request: web.Request) -> web.Response:
        model = request.match_info.get("name", "")
        try:
            if request.method == "POST":
                body = await self._json(request)
                current = await self.settings.update_trace(model, json=body)
            else:
                current = await self.settings.trace_settings(model)
        except DyntritonError as exc:
            return error_response(exc)
        return json_response(current.as_json(model))
