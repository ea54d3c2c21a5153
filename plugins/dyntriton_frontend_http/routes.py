"""The KServe v2 REST endpoints (with Triton's extensions) and the operator endpoints, as aiohttp handlers.

Every inference goes through the core's :class:`~dynamo_triton.runtime.pipeline.RequestPipeline`
(validate -> route -> count), the one the gRPC frontend uses: this module only turns HTTP into
a ``ModelInferRequest`` (:mod:`.infer_request`, :mod:`.generate`) and responses back into HTTP
(:mod:`.infer_response`). Errors are Triton's ``{"error": "..."}`` with the status of the error
(:data:`.responses.HTTP_STATUS`). A client that disconnects cancels its handler (the server runs
with handler cancellation), which cancels the worker's request.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dynamo_triton.errors import DyntritonError, InvalidRequestError
from dynamo_triton.frontend import InferenceService, ModelRepository, ServedModel
from dynamo_triton.runtime.identity import server_identity
from dynamo_triton.runtime.pipeline import RequestPipeline
from dynamo_triton.runtime.tracing import RequestTracing
from dyntriton_frontend_http.compression import (
    SUPPORTED,
    BodyTooLargeError,
    UnsupportedEncodingError,
    compress,
    decompress,
    response_encoding,
)
from dyntriton_frontend_http.generate import generate_request, generate_response, sse_event
from dyntriton_frontend_http.infer_request import RestInferRequest, parse_infer_body
from dyntriton_frontend_http.infer_response import render_infer_response
from dyntriton_frontend_http.responses import dumps, error_response, json_response, message_to_json
from dyntriton_frontend_http.settings import SettingsRoutes
from dyntriton_frontend_http.shared_memory import add_shared_memory_routes

__all__ = ["INFER_HEADER_LENGTH", "RestRoutes"]

INFER_HEADER_LENGTH = "Inference-Header-Content-Length"
_MODEL = "/v2/models/{name}"
_VERSIONED = "/v2/models/{name}/versions/{version:[0-9]+}"


def _model_paths(suffix: str = "") -> tuple[str, str]:
    return _MODEL + suffix, _VERSIONED + suffix


class RestRoutes:
    """Handlers over one routing core.

    :param service: the routing core (models, statistics, inference).
    :param max_input_size: the largest request body accepted, after decompression (bytes).
    :param server_name: the name ``/v2`` reports (None: ``triton``).
    """

    def __init__(self, service: InferenceService, *, max_input_size: int, server_name: str | None = None):
        self.service = service
        self.pipeline = RequestPipeline(service, protocol="http")
        self.tracing: RequestTracing = getattr(service, "tracing", None) or RequestTracing()
        self.table = service.dtypes
        self.max_input_size = max_input_size
        self.server_name = server_name

    def add_to(self, app: web.Application) -> None:
        """Register every route on ``app``."""
        get, post = app.router.add_get, app.router.add_post
        get("/health", self.health)
        get("/live", self.live)
        get("/metrics", self.prometheus)
        get("/v2", self.server_metadata)
        get("/v2/health/live", self.live)
        get("/v2/health/ready", self.ready)
        get("/v2/models/stats", self.statistics)
        post("/v2/repository/index", self.repository_index)
        post("/v2/repository/models/{name}/load", self.repository_load)
        post("/v2/repository/models/{name}/unload", self.repository_unload)
        for suffix in ("/index", "/models/{name}/load", "/models/{name}/unload"):  # Triton's repository-named forms
            post("/v2/repository/{repository}" + suffix, self.repository_named)
        for path in _model_paths():
            get(path, self.model_metadata)
        for suffix, handler in (("/ready", self.model_ready), ("/config", self.model_config)):
            for path in _model_paths(suffix):
                get(path, handler)
        for path in _model_paths("/stats"):
            get(path, self.statistics)
        for suffix, handler in (
            ("/infer", self.infer),
            ("/generate", self.generate),
            ("/generate_stream", self.generate_stream),
        ):
            for path in _model_paths(suffix):
                post(path, handler)
        settings = getattr(self.service, "settings", None)
        if settings is not None:  # the logging and trace extensions
            SettingsRoutes(settings, self._body).add_to(app)
        add_shared_memory_routes(app, getattr(self.service, "shared_memory", None), self._body)

    # -- health, metadata, statistics -------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        models = [{"name": m.name, "version": m.version, "instances": m.instances} for m in self.service.models()]
        ready = self.service.ready()
        return json_response({"status": "healthy" if ready else "unhealthy", "models": models}, 200 if ready else 503)

    async def live(self, _request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, _request: web.Request) -> web.Response:
        ready = self.service.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def prometheus(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.service.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def server_metadata(self, _request: web.Request) -> web.Response:
        identity = server_identity(self.service, self.server_name)
        return json_response(
            {
                "name": identity.name,
                "version": identity.version,
                "extensions": list(identity.extensions),  # the same list gRPC's ServerMetadata gives
                "server": {"name": "dyntriton", "version": identity.server_version},
            }
        )

    def _served(self, request: web.Request) -> ServedModel:
        return self.service.model(request.match_info["name"], request.match_info.get("version", ""))

    async def model_metadata(self, request: web.Request) -> web.Response:
        try:
            return json_response(message_to_json(self._served(request).metadata))
        except DyntritonError as exc:
            return error_response(exc)

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._served(request)
        except DyntritonError as exc:
            return error_response(exc)
        return json_response({"ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        try:
            return json_response(message_to_json(self._served(request).config, defaults=True))
        except DyntritonError as exc:
            return error_response(exc)

    async def statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("name", ""), request.match_info.get("version", "")
        try:
            if name:
                self._served(request)
            stats = await self.service.statistics(name)
        except DyntritonError as exc:
            return error_response(exc)
        if version:
            kept = [s for s in stats.model_stats if s.version == version]
            del stats.model_stats[:]
            stats.model_stats.extend(kept)
        return json_response(message_to_json(stats, defaults=True))

    async def repository_index(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            ready = False
            if body.strip():
                options = self._json(body, "repository index")
                if not isinstance(options, dict):
                    raise InvalidRequestError(
                        'the repository index request must be a JSON object, e.g. {"ready": true}'
                    )
                if "ready" in options and not isinstance(options["ready"], bool):
                    raise InvalidRequestError("Invalid value for 'ready': expected a boolean")
                ready = bool(options.get("ready", False))
            if self.service.repository is None:  # no model control: what is served is all there is
                return json_response(
                    [{"name": m.name, "version": m.version, "state": "READY"} for m in self.service.models()]
                )
            entries = await self.service.repository.index(ready=ready)
        except DyntritonError as exc:
            return error_response(exc)
        # As Triton: a model never loaded has only its name; empty fields are left out.
        return json_response([{key: value for key, value in entry.__dict__.items() if value} for entry in entries])

    async def repository_load(self, request: web.Request) -> web.Response:
        """``POST /v2/repository/models/{name}/load``: Triton's ``config`` (JSON string) and ``file:<path>``
        (base64) parameters; answers once the model is ready on a worker (docs/model-control.md)."""
        try:
            repository = self._repository()
            parameters = await self._parameters(request, "load model")
            config, files = None, {}
            for key, value in parameters.items():
                if not isinstance(value, str):
                    raise InvalidRequestError(f"Unable to parse load parameter '{key}': expected a string")
                if key == "config":
                    config = value
                elif key.startswith("file:"):
                    try:
                        files[key[len("file:") :]] = base64.b64decode(value, validate=True)
                    except (binascii.Error, ValueError):
                        raise InvalidRequestError(f"Failed to decode base64 for load parameter '{key}'") from None
                else:
                    raise InvalidRequestError(f"unrecognized load parameter '{key}'.")
            await repository.load(request.match_info["name"], config=config, files=files)
        except DyntritonError as exc:
            return error_response(exc)
        return web.Response(status=200)

    async def repository_unload(self, request: web.Request) -> web.Response:
        """``POST /v2/repository/models/{name}/unload``: unload it on every worker that takes model control."""
        try:
            repository = self._repository()
            dependents = (await self._parameters(request, "unload model")).get("unload_dependents", False)
            if not isinstance(dependents, bool):
                raise InvalidRequestError("Unable to parse 'unload_dependents': expected a boolean")
            if dependents:
                raise DyntritonError("unload_dependents is not supported by dyntriton", status="UNIMPLEMENTED")
            await repository.unload(request.match_info["name"])
        except DyntritonError as exc:
            return error_response(exc)
        return web.Response(status=200)

    async def repository_named(self, _request: web.Request) -> web.Response:
        return error_response(
            DyntritonError("'repository_name' specification is not supported", status="UNIMPLEMENTED")
        )

    def _repository(self) -> ModelRepository:
        if self.service.repository is None:
            raise DyntritonError(
                "model load and unload are not supported by this frontend (no model control)", status="UNIMPLEMENTED"
            )
        return self.service.repository

    async def _parameters(self, request: web.Request, what: str) -> dict[str, Any]:
        """The ``parameters`` object of an optional ``{"parameters": {...}}`` body."""
        body = await self._body(request)
        if not body.strip():
            return {}
        parsed = self._json(body, what)
        parameters = parsed.get("parameters", {}) if isinstance(parsed, dict) else None
        if not isinstance(parameters, dict):
            raise InvalidRequestError(f'the {what} request must be a JSON object like {{"parameters": {{...}}}}')
        return parameters

    # -- request bodies ---------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> bytes:
        """The request body, decompressed, at most ``max_input_size`` bytes (BodyTooLargeError past it)."""
        length = request.content_length
        if length is not None and length > self.max_input_size:
            raise BodyTooLargeError(length, self.max_input_size)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLargeError(None, self.max_input_size) from None
        return await decompress(body, request.headers.get("Content-Encoding"), self.max_input_size)

    @staticmethod
    def _json(body: bytes, what: str) -> Any:
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequestError(f"failed to parse the {what} request JSON: {exc}") from None

    @staticmethod
    def _header_length(request: web.Request, body_size: int) -> int | None:
        value = request.headers.get(INFER_HEADER_LENGTH)
        if value is None:
            return None
        try:
            length = int(value)
        except ValueError:
            raise InvalidRequestError(
                f"Unable to parse {INFER_HEADER_LENGTH}, got: {value!r}",
                hint="it is the byte length of the JSON header that starts the body",
            ) from None
        if not 0 <= length <= body_size:
            raise InvalidRequestError(
                f"inference header size should be in range [0, {body_size}] (the body's length), got: {length}"
            )
        return length

    def _failed(self, request: web.Request, error: DyntritonError) -> web.Response:
        """Count a failure found before the pipeline saw the request, and answer it."""
        name = request.match_info.get("name", "")
        known = name in {model.name for model in self.service.models()}
        self.pipeline.failed(name if known else "", error)
        response = error_response(error)
        if isinstance(error, UnsupportedEncodingError):
            response.set_status(415)
            response.headers["Accept-Encoding"] = SUPPORTED
        return response

    # -- inference --------------------------------------------------------------------------------
    async def _infer_request(self, request: web.Request) -> RestInferRequest:
        served = self._served(request)
        if served.decoupled:
            raise InvalidRequestError(
                f"model '{served.name}' is decoupled (it answers with any number of responses), and /infer "
                "answers with exactly one",
                hint=f"use POST /v2/models/{served.name}/generate_stream (server-sent events) or gRPC ModelStreamInfer",
            )
        body = await self._body(request)
        header_length = self._header_length(request, len(body))
        return parse_infer_body(
            body,
            header_length,
            model=served.name,
            version=request.match_info.get("version", ""),
            table=self.table,
            config=served.config,
        )

    async def infer(self, request: web.Request) -> web.StreamResponse:
        """``POST …/infer``: JSON and binary tensors in, JSON and binary tensors out."""
        try:
            rest = await self._infer_request(request)
        except DyntritonError as exc:
            return self._failed(request, exc)
        try:
            prepared = self.pipeline.prepare(rest.request, rest.raw, raw_inputs=rest.raw_inputs)
            if self.tracing.on:
                prepared.trace = self.tracing.begin(prepared.model, "http", request.headers.items(), prepared.started)
            answer = await self.pipeline.unary(prepared)
            rendered = render_infer_response(answer, rest.outputs, self.table)
        except DyntritonError as exc:
            return error_response(exc)
        headers = {}
        if rendered.binary:
            headers[INFER_HEADER_LENGTH] = str(len(rendered.header))
            body = b"".join([rendered.header, *rendered.binary])
            content_type = "application/octet-stream"
        else:
            body, content_type = rendered.header, "application/json"
        encoding = response_encoding(request.headers.get("Accept-Encoding"))
        if encoding != "identity":
            body = await compress(body, encoding)
            headers["Content-Encoding"] = encoding
        headers["Content-Type"] = content_type
        return web.Response(body=body, headers=headers)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """``POST …/generate``: one JSON object in, the model's one response as one JSON object out."""
        try:
            rest = await self._generate_request(request)
        except DyntritonError as exc:
            return self._failed(request, exc)
        answers: list[dict[str, Any]] = []
        try:
            prepared = self.pipeline.prepare(rest.request, rest.raw, raw_inputs=rest.raw_inputs)
            async with contextlib.aclosing(self.pipeline.stream(prepared)) as stream:
                async for data in stream:
                    answer = generate_response(data, self.table)
                    if answer is not None:
                        answers.append(answer)
        except DyntritonError as exc:
            return error_response(exc)
        if len(answers) != 1:
            return error_response(
                InvalidRequestError(
                    f"generate expects model to produce exactly 1 response, got {len(answers)}",
                    hint=f"use POST /v2/models/{request.match_info['name']}/generate_stream for a model that "
                    "answers with a varying number of responses",
                )
            )
        return json_response(answers[0])

    async def _generate_request(self, request: web.Request) -> RestInferRequest:
        served = self._served(request)
        body = self._json(await self._body(request), "generate")
        return generate_request(
            body,
            model=served.name,
            version=request.match_info.get("version", ""),
            metadata=served.metadata,
            table=self.table,
        )

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """``POST …/generate_stream``: each response as a server-sent event, as the model produces it.

        An error before the first response is a JSON error with its status; after it, an
        ``data: {"error": ...}`` event (the 200 is already sent), then the stream ends.
        """
        try:
            rest = await self._generate_request(request)
        except DyntritonError as exc:
            return self._failed(request, exc)
        try:
            prepared = self.pipeline.prepare(rest.request, rest.raw, raw_inputs=rest.raw_inputs)
        except DyntritonError as exc:
            return error_response(exc)
        response: web.StreamResponse | None = None
        async with contextlib.aclosing(self.pipeline.stream(prepared)) as stream:
            try:
                async for data in stream:
                    answer = generate_response(data, self.table)
                    if answer is None:
                        continue
                    if response is None:
                        response = await self._start_events(request)
                    await response.write(sse_event(answer))
            except DyntritonError as exc:
                if response is None:
                    return error_response(exc)
                await response.write(sse_event({"error": str(exc)}))
        if response is None:
            response = await self._start_events(request)
        await response.write_eof()
        return response

    @staticmethod
    async def _start_events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        return response


def not_found_body(status: int) -> bytes:
    """Triton's body for unrouted paths (404) and wrong methods (405)."""
    return dumps({"error": "Not Found" if status == 404 else "Method Not Allowed"})
