"""HTTP frontend on aiohttp: KServe v2 REST with Triton's extensions, plus operator endpoints.

Routes (see :mod:`.routes`): ``/health``, ``/live``, ``/metrics`` (Prometheus); ``/v2``,
``/v2/health/{live,ready}``, ``/v2/models/stats``, ``/v2/repository/index`` and, under
``/v2/models/{name}[/versions/{v}]``: metadata, ``ready``, ``config``, ``stats``, ``infer``
(JSON and binary tensors), ``generate`` and ``generate_stream`` (server-sent events).

Options (``FrontendSettings.options``): ``max_input_size`` (bytes, default 64 MiB like
Triton's ``--http-max-input-size``), ``server_name`` (what ``/v2`` reports), ``tls_cert`` and
``tls_key`` (PEM paths: HTTPS on the port, every route included, ``/health`` and ``/metrics``
too) and ``tls_client_ca`` (PEM: clients must present a certificate it signed), the same keys
and files as the gRPC frontend's. The files are loaded before the port opens: a bad one is a
ConfigError naming it (:func:`dynamo_triton.tls.server_context`).

The server runs with handler cancellation: a client that disconnects cancels its
handler, and so the worker's request. It reads bodies itself (no automatic
decompression) so that ``Content-Encoding`` follows Triton's rules and limits.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import FrontendSettings, InferenceService
from dynamo_triton.tls import server_context
from dyntriton_frontend_http.routes import RestRoutes, not_found_body

__all__ = ["DEFAULT_MAX_INPUT_SIZE", "HttpFrontend"]

#: Triton's default ``--http-max-input-size``.
DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unrouted paths and wrong methods answer ``{"error": ...}`` as Triton does, not aiohttp's text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return web.Response(
            status=exc.status, body=not_found_body(exc.status), content_type="application/json", headers=headers
        )


class HttpFrontend:
    """The Frontend protocol (dynamo_triton.frontend) for HTTP."""

    def __init__(self, settings: FrontendSettings, service: InferenceService):
        self.settings, self.service = settings, service
        self.metrics = service.metrics
        options = settings.options
        max_input_size = int(options.get("max_input_size") or DEFAULT_MAX_INPUT_SIZE)
        if max_input_size <= 0:
            raise ConfigError(f"the HTTP max input size must be a positive number of bytes, got {max_input_size}")
        self.routes = RestRoutes(service, max_input_size=max_input_size, server_name=options.get("server_name") or None)
        self._runner: web.AppRunner | None = None
        self._port = settings.port

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context the port serves with, or None for plain HTTP (no ``tls_cert`` option)."""
        options = self.settings.options
        if not options.get("tls_cert"):
            return None
        if not options.get("tls_key"):
            raise ConfigError("HTTPS needs a key with its certificate", hint="give --tls-key with --tls-cert")
        context = server_context(options["tls_cert"], options["tls_key"], options.get("tls_client_ca") or None)
        context.set_alpn_protocols(["http/1.1"])  # aiohttp speaks HTTP/1.1 only
        return context

    @property
    def port(self) -> int:
        return self._port

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.routes.max_input_size, middlewares=[json_errors])
        self.routes.add_to(app)
        return app

    async def start(self) -> None:
        tls = self.tls()  # before the port opens: a bad file must not leave a half-started server
        self._runner = web.AppRunner(
            self.application(), access_log=None, handler_cancellation=True, auto_decompress=False
        )
        await self._runner.setup()
        reuse_port = bool(self.settings.options.get("reuse_port"))  # several frontend processes, one port
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, ssl_context=tls, reuse_port=reuse_port or None
        )
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
