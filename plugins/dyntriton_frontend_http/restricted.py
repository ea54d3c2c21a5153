"""Triton's ``--http-restricted-api`` on the HTTP frontend: a middleware (only when asked).

The groups, their routes and the refusal text are the core's (:mod:`dynamo_triton.runtime.restrictions`);
a refused call is answered 403 ``{"error": "This API is restricted, expecting header '<key>'"}`` as Triton.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from dynamo_triton.runtime.restrictions import Restrictions, http_group
from dyntriton_frontend_http.responses import json_response

__all__ = ["restricted_apis"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def restricted_apis(restrictions: Restrictions) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware refusing calls of a restricted group without the group's header and value."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = restrictions.refusal(http_group(request.path), request.headers.get)
        if refusal is not None:
            return json_response({"error": refusal}, 403)
        return await handler(request)

    return middleware
