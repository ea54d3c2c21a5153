"""Triton's ``--grpc-restricted-protocol`` on the gRPC frontend: a server interceptor (only when asked).

The groups, their calls and the refusal text are the core's (:mod:`dynamo_triton.runtime.restrictions`);
this module only reads the call's metadata and answers UNAVAILABLE with Triton's message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from dynamo_triton.runtime.restrictions import GRPC_GROUPS, Restrictions

__all__ = ["RestrictedProtocols"]

_PREFIX = "/inference.GRPCInferenceService/"


class RestrictedProtocols(grpc.aio.ServerInterceptor):
    """Refuses calls of a restricted group that lack the group's metadata header and value."""

    def __init__(self, restrictions: Restrictions):
        self._restrictions = restrictions

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        refusal = self._restrictions.refusal(GRPC_GROUPS.get(method[len(_PREFIX) :]), metadata.get)
        if refusal is None:
            return handler
        return _refusing(handler, refusal)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAVAILABLE ``message``."""

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def streaming(_requests: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        yield  # pragma: no cover - an async generator, as grpc.aio wants for streamed answers

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.unary_unary_rpc_method_handler(unary)
