"""HTTP frontend on aiohttp: KServe v2 REST with Triton's extensions, plus operator endpoints.

Routes (see :mod:`.routes`): ``/health``, ``/live``, ``/metrics`` (Prometheus); ``/v2``,
``/v2/health/{live,ready}``, ``/v2/models/stats``, ``/v2/repository/index`` and, under
``/v2/models/{name}[/versions/{v}]``: metadata, ``ready``, ``config``, ``stats``, ``infer``
(JSON and binary tensors), ``generate`` and ``generate_stream`` (server-sent events).

Settings (:class:`~dyntriton_frontend_http.options.HttpSettings`): ``max_input_size`` (bytes,
default 64 MiB like Triton's ``--http-max-input-size``), ``server_name`` (what ``/v2`` reports),
``tls_cert`` and ``tls_key`` (PEM paths: HTTPS on the port, every route included, ``/health`` and
``/metrics`` too, unless ``http_tls`` is off) and ``tls_client_ca`` (PEM: clients must present a
certificate it signed), the same files as the gRPC frontend's. The files are loaded before the
port opens: a bad one is a ConfigError naming it (:func:`dynamo_triton.tls.server_context`).

With ``reuse_port`` and ``max_connection_age`` (seconds; several frontend processes on the
port), :meth:`HttpFrontend.stop` drains first: it stops listening (new connections go to the
other processes), answers every request with ``Connection: close`` so keep-alive clients
reconnect elsewhere after their answer, and waits until its connections are gone or the age
has passed; then idle connections are closed and requests in flight finish.

The server runs with handler cancellation: a client that disconnects cancels its
handler, and so the worker's request. It reads bodies itself (no automatic
decompression) so that ``Content-Encoding`` follows Triton's rules and limits.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import FrontendSettings, InferenceService
from dynamo_triton.runtime.restrictions import parse_restrictions
from dynamo_triton.settings import promote
from dynamo_triton.tls import server_context
from dyntriton_frontend_http.options import DEFAULT_MAX_INPUT_SIZE, HttpSettings
from dyntriton_frontend_http.restricted import restricted_apis
from dyntriton_frontend_http.routes import RestRoutes, not_found_body

__all__ = ["DEFAULT_MAX_INPUT_SIZE", "HttpFrontend"]

#: Triton's default ``--http-max-input-size``.

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)


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
        own: HttpSettings = (
            settings if isinstance(settings, HttpSettings) else promote(HttpSettings, settings)
        )  # the common settings only: HTTP's own take defaults
        settings = self.settings = own
        self.service = service
        self.metrics = service.metrics
        max_input_size = settings.max_input_size
        if max_input_size <= 0:
            raise ConfigError(f"the HTTP max input size must be a positive number of bytes, got {max_input_size}")
        self.routes = RestRoutes(service, max_input_size=max_input_size, server_name=settings.server_name or None)
        self._runner: web.AppRunner | None = None
        self._port = settings.port
        self._reuse_port = settings.reuse_port
        self._max_connection_age = settings.max_connection_age if settings.reuse_port else 0.0
        self._draining = False
        self._socket: socket.socket | None = None
        self._tls: ssl.SSLContext | None = None
        try:  # Triton's --http-restricted-api specs
            self._restrictions = parse_restrictions(settings.restricted, grpc=False)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context the port serves with, or None for plain HTTP (no ``tls_cert``, or ``http_tls`` off)."""
        settings = self.settings
        if not settings.tls_cert or not settings.http_tls:
            return None
        if not settings.tls_key:
            raise ConfigError("HTTPS needs a key with its certificate", hint="give --tls-key with --tls-cert")
        context = server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca or None)
        context.set_alpn_protocols(["http/1.1"])  # aiohttp speaks HTTP/1.1 only
        return context

    @property
    def port(self) -> int:
        return self._port

    def application(self) -> web.Application:
        middlewares = [json_errors]
        if self._restrictions:
            middlewares.append(restricted_apis(self._restrictions))
        if self._reuse_port and self._max_connection_age > 0:
            middlewares.append(self._close_when_draining)
        app = web.Application(client_max_size=self.routes.max_input_size, middlewares=middlewares)
        self.routes.add_to(app)
        return app

    async def bind(self) -> None:
        """Bind the port without answering yet (a frontend stack binds every port before any answers).

        Raises ConfigError naming the address when it cannot; the TLS files are read first, so a
        bad one leaves nothing bound.
        """
        if self._socket is not None:
            return
        self._tls = self.tls()
        host, port = self.settings.host, self.settings.port
        try:
            family, _, _, _, address = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            self._socket = socket.create_server(address, family=family, reuse_port=self._reuse_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}",
                hint="pick another port with --http-port / DYN_HTTP_PORT (0 = any free port)",
            ) from exc
        self._port = self._socket.getsockname()[1]

    async def start(self) -> None:
        await self.bind()
        assert self._socket is not None
        self._runner = web.AppRunner(
            self.application(), access_log=None, handler_cancellation=True, auto_decompress=False
        )
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket, ssl_context=self._tls).start()

    @web.middleware
    async def _close_when_draining(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if self._draining:
            response.force_close()  # ``Connection: close``: the client's next request goes to another process
        return response

    async def stop(self, *, grace: float = 5.0) -> None:
        if self._runner is None:
            if self._socket is not None:  # bound, never started
                self._socket.close()
                self._socket = None
            return
        if self._reuse_port and self._max_connection_age > 0:
            await self._drain()
        await self._runner.cleanup()  # closes the socket too
        self._runner = None
        self._socket = None

    async def _drain(self) -> None:
        """Stop listening; answer with ``Connection: close`` until the connections are gone or the age passed."""
        assert self._runner is not None
        for site in list(self._runner.sites):
            await site.stop()
        self._draining = True
        server = self._runner.server
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_connection_age
        while server is not None and server.connections:
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)  # aiohttp says nothing when a connection closes
        if server is not None and server.connections:
            log.info("HTTP port %d: closing %d connection(s) left after draining", self._port, len(server.connections))
