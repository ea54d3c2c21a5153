"""Triton's logging (``LogSettings``) and trace (``TraceSetting``) extensions on the gRPC frontend.

The rules, the store record and who applies them are the core's (:mod:`dynamo_triton.runtime.cluster_settings`);
these handlers only turn the protobuf messages into its calls and back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import DyntritonError
from dynamo_triton.runtime.cluster_settings import ClusterSettings

__all__ = ["settings_handlers"]

Unary = Callable[[Any, Any, Any], grpc.RpcMethodHandler]


def _code(error: DyntritonError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.status, grpc.StatusCode.INTERNAL)


def settings_handlers(settings: ClusterSettings | None, unary: Unary) -> dict[str, grpc.RpcMethodHandler]:
    """``LogSettings`` and ``TraceSetting`` handlers, or none when the service keeps no settings."""
    if settings is None:
        return {}

    async def log_settings(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request.settings:
                current = await settings.update_log(grpc=request.settings)
            else:
                current = await settings.log_settings()
        except DyntritonError as exc:
            await context.abort(_code(exc), exc.message)
        response = service_pb2.LogSettingsResponse()
        for name, value in current.as_dict().items():
            kind = (
                "bool_param"
                if isinstance(value, bool)
                else "uint32_param"
                if isinstance(value, int)
                else "string_param"
            )
            setattr(response.settings[name], kind, value)
        return response

    async def trace_setting(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request.settings:
                current = await settings.update_trace(request.model_name, grpc=request.settings)
            else:
                current = await settings.trace_settings(request.model_name)
        except DyntritonError as exc:
            await context.abort(_code(exc), exc.message)
        response = service_pb2.TraceSettingResponse()
        for name, values in current.as_grpc(request.model_name).items():
            response.settings[name].value.extend(values)
        return response

    return {
        "LogSettings": unary(log_settings, service_pb2.LogSettingsRequest, service_pb2.LogSettingsResponse),
        "TraceSetting": unary(trace_setting, service_pb2.TraceSettingRequest, service_pb2.TraceSettingResponse),
    }
