"""REST's shared-memory endpoints: ``/v2/systemsharedmemory/...`` and ``/v2/cudasharedmemory/...``.

System regions live in the core's registry (:mod:`dynamo_triton.runtime.shared_memory`), shared
with gRPC and with every frontend process of the host. CUDA shared memory is answered as
``tritonserver`` answers on a host without a GPU (docs/shared-memory.md): an empty status, a
successful unregister, a register refused; nothing is accepted and then ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dynamo_triton.errors import DyntritonError, InvalidRequestError, ModelNotFoundError
from dynamo_triton.runtime.shared_memory import SharedMemoryRegistry, region_records
from dyntriton_frontend_http.responses import error_response, json_response

__all__ = ["add_shared_memory_routes"]

_SYSTEM = "/v2/systemsharedmemory"
_CUDA = "/v2/cudasharedmemory"
#: Triton's answer when a CUDA IPC handle cannot be opened (every handle, on a host without a GPU).
CUDA_REGISTER_REFUSED = "failed to register shared memory region: invalid args"

BodyReader = Callable[[web.Request], Awaitable[bytes]]


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"failed to parse the {what} request JSON: {exc}") from None
    if not isinstance(parsed, dict):
        return {}
    return parsed


def _uint(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError(
            f"Unable to parse '{field}' of the shared memory register request: expected an unsigned integer, "
            f"got {value!r:.60}"
        )
    return value


class _SystemRoutes:
    def __init__(self, registry: SharedMemoryRegistry, body: BodyReader):
        self.registry, self._body = registry, body

    async def status(self, request: web.Request) -> web.Response:
        try:
            regions = await self.registry.status(request.match_info.get("name", ""))
        except DyntritonError as exc:
            return error_response(exc)
        return json_response(region_records(regions))

    async def register(self, request: web.Request) -> web.Response:
        """Body ``{"key": ..., "offset": ..., "byte_size": ...}`` (offset optional)."""
        try:
            options = _json_object(await self._body(request), "shared memory register")
            key = options.get("key")
            if not isinstance(key, str):
                raise InvalidRequestError("Shared memory register request has no 'key' field")
            if "byte_size" not in options:
                raise InvalidRequestError("Shared memory register request has no 'byte_size' field")
            byte_size = _uint(options["byte_size"], "byte_size")
            offset = _uint(options.get("offset", 0), "offset")
            await self.registry.register(request.match_info["name"], key, offset, byte_size)
        except DyntritonError as exc:
            return error_response(exc)
        return web.Response(status=200)

    async def unregister(self, request: web.Request) -> web.Response:
        try:
            await self.registry.unregister(request.match_info.get("name", ""))
        except DyntritonError as exc:
            return error_response(exc)
        return web.Response(status=200)


async def _cuda_status(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "")
    if name:  # nothing is ever registered
        return error_response(ModelNotFoundError(f"Unable to find cuda shared memory region: '{name}'"))
    return json_response([])


def _cuda_register(body: BodyReader) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def register(request: web.Request) -> web.Response:
        try:
            options = _json_object(await body(request), "cuda shared memory register")
            if "raw_handle" not in options:
                raise InvalidRequestError("Shared memory register request has no 'raw_handle' field")
            handle = options["raw_handle"]
            encoded = handle.get("b64") if isinstance(handle, dict) else None
            try:
                valid = isinstance(encoded, str) and len(base64.b64decode(encoded, validate=True)) == 64
            except (binascii.Error, ValueError):
                valid = False
            if not valid:
                raise InvalidRequestError("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
            for field in ("device_id", "byte_size"):
                if field not in options:
                    raise InvalidRequestError(f"Shared memory register request has no '{field}' field")
                _uint(options[field], field)
            raise InvalidRequestError(CUDA_REGISTER_REFUSED)
        except DyntritonError as exc:
            return error_response(exc)

    return register


async def _cuda_unregister(_request: web.Request) -> web.Response:
    return web.Response(status=200)


def add_shared_memory_routes(app: web.Application, registry: SharedMemoryRegistry | None, body: BodyReader) -> None:
    """Register the shared-memory routes on ``app`` (the system ones only with a ``registry``).

    :param body: reads a request's body (size limit and decompression are the caller's).
    """
    get, post = app.router.add_get, app.router.add_post
    if registry is not None:
        system = _SystemRoutes(registry, body)
        get(f"{_SYSTEM}/status", system.status)
        get(f"{_SYSTEM}/region/{{name}}/status", system.status)
        post(f"{_SYSTEM}/region/{{name}}/register", system.register)
        post(f"{_SYSTEM}/unregister", system.unregister)
        post(f"{_SYSTEM}/region/{{name}}/unregister", system.unregister)
    get(f"{_CUDA}/status", _cuda_status)
    get(f"{_CUDA}/region/{{name}}/status", _cuda_status)
    post(f"{_CUDA}/region/{{name}}/register", _cuda_register(body))
    post(f"{_CUDA}/unregister", _cuda_unregister)
    post(f"{_CUDA}/region/{{name}}/unregister", _cuda_unregister)
