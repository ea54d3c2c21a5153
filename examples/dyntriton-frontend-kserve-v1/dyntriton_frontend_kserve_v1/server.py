"""KServe V1 REST on aiohttp, each request through the core's :class:`RequestPipeline`.

V1 speaks JSON lists (``instances`` in, ``predictions`` out); they are turned into one raw tensor
with numpy (no per-element Python loop) and the request goes the way every v2 request goes:
validated against the model's config, routed as bytes, counted once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import numpy as np
from aiohttp import web

from dynamo_triton.errors import ConfigError, DyntritonError, InvalidRequestError
from dynamo_triton.frontend import InferenceService, ServedModel
from dynamo_triton.runtime.pipeline import RequestPipeline
from dynamo_triton.tensors import array_from_raw, array_to_raw
from dynamo_triton.tls import server_context

__all__ = ["V1Frontend"]

log = logging.getLogger(__name__)

#: HTTP status of each error status (KServe V1 answers errors as ``{"error": "..."}``).
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "CANCELLED": 499,
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _failure(error: DyntritonError) -> web.Response:
    return _error(HTTP_STATUS.get(error.status, 500), error.message)


class V1Frontend:
    """The Frontend protocol (dynamo_triton.frontend) for KServe V1."""

    def __init__(self, settings: Any, service: InferenceService):
        self.settings, self.service = settings, service
        self.pipeline = RequestPipeline(service, "kserve-v1")
        self._runner: web.AppRunner | None = None
        self._port = settings.port
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def port(self) -> int:
        return self._port

    def _tls(self) -> ssl.SSLContext | None:
        if not self.settings.serves_tls():
            return None
        return server_context(self.settings.tls_cert, self.settings.tls_key, self.settings.tls_client_ca)

    async def start(self) -> None:
        tls = self._tls()
        app = web.Application(middlewares=[self._count])
        app.router.add_get("/v1/models/{name}", self.model_ready)
        app.router.add_post("/v1/models/{name}:predict", self.predict)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"cannot listen for KServe V1 on {self.settings.host}:{self.settings.port}: {exc.strerror}",
                hint="pick another port with --v1-port / DYN_V1_PORT (0 = any free port)",
            ) from exc
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self._port = server.sockets[0].getsockname()[1]

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop listening (new connections are refused), answer the requests in flight within ``grace``, close."""
        if self._runner is None:
            return
        for site in list(self._runner.sites):
            await site.stop()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("KServe V1: %d request(s) still running after %g s; closing", self._in_flight, grace)
        await self._runner.cleanup()
        self._runner = None

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Requests in flight, so :meth:`stop` waits for them."""
        self._in_flight += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    # -- routes ----------------------------------------------------------------------------------
    async def model_ready(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{name}``: ``{"name", "ready"}``; 404 for a model nobody serves."""
        name = request.match_info["name"]
        try:
            served = self.service.model(name)
        except DyntritonError as exc:
            if exc.status == "UNAVAILABLE":  # known, but no live instance now
                return web.json_response({"name": name, "ready": False})
            return _failure(exc)
        return web.json_response({"name": served.name, "ready": served.instances > 0})

    async def predict(self, request: web.Request) -> web.Response:
        """``POST /v1/models/{name}:predict``: instances are the one input's rows; predictions the one output's."""
        name = request.match_info["name"]
        try:
            served = self.service.model(name)
            body = await request.read()
            instances = _instances(body)
            infer = _infer_request(served, instances, self.service)
            prepared = self.pipeline.prepare(infer)
            answer = await self.pipeline.unary(prepared)
            return web.json_response({"predictions": _predictions(answer, self.service)})
        except DyntritonError as exc:
            log.debug("V1 predict for %s failed: %s", name, exc)
            return _failure(exc)


def _instances(body: bytes) -> list[Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidRequestError(f"the request body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        raise InvalidRequestError('expected a JSON object with an "instances" list, e.g. {"instances": [[1, 2, 3]]}')
    if not document["instances"]:
        raise InvalidRequestError('"instances" is empty: give at least one instance')
    return document["instances"]


def _one(items: Any, what: str, model: str) -> Any:
    if len(items) != 1:
        raise InvalidRequestError(
            f"model '{model}' has {len(items)} {what}s; the KServe V1 frontend serves models with one input "
            "and one output"
        )
    return items[0]


def _infer_request(served: ServedModel, instances: list[Any], service: InferenceService) -> Any:
    """The v2 ``ModelInferRequest`` of a V1 predict: the instances as one raw tensor."""
    from tritonclient.grpc import service_pb2

    tensor = _one(served.metadata.inputs, "input", served.name)
    _one(served.metadata.outputs, "output", served.name)
    row = service.dtypes.by_kserve(tensor.datatype)
    try:
        array = np.asarray(instances, dtype=row.numpy)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(
            f"the instances do not form a {tensor.datatype} tensor for input '{tensor.name}': {exc}"
        ) from exc
    request = service_pb2.ModelInferRequest(model_name=served.name)
    given = request.inputs.add(name=tensor.name, datatype=tensor.datatype)
    given.shape.extend(array.shape)
    request.raw_input_contents.append(array_to_raw(array, tensor.datatype, table=service.dtypes))
    return request


def _predictions(answer: bytes, service: InferenceService) -> list[Any]:
    """The rows of the response's one output, as JSON-ready lists."""
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(answer)
    output = response.outputs[0]
    array = array_from_raw(response.raw_output_contents[0], output.datatype, list(output.shape), table=service.dtypes)
    if array.dtype == object:  # BYTES: text where it decodes
        return [_text(item) for item in array.reshape(-1)]
    return array.tolist()


def _text(item: Any) -> Any:
    try:
        return item.decode() if isinstance(item, bytes) else item
    except UnicodeDecodeError:
        return item.hex()
