"""gRPC's shared-memory RPCs: ``SystemSharedMemory{Status,Register,Unregister}`` and the CUDA ones.

System regions live in the core's registry (:mod:`dynamo_triton.runtime.shared_memory`), shared by
every frontend process of the host. CUDA shared memory is answered as ``tritonserver`` answers on
a host without a GPU: an empty status, a successful unregister, and a register that fails with
Triton's "invalid args" (nothing is ever accepted and then ignored). docs/shared-memory.md
describes the GPU path (an IPC handle handed to a worker on the same host), which is not built.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import DyntritonError, InvalidRequestError
from dynamo_triton.frontend import InferenceService
from dynamo_triton.runtime.shared_memory import SharedMemoryRegistry

__all__ = ["CUDA_REGISTER_REFUSED", "shared_memory_handlers"]

#: Triton's answer to CudaSharedMemoryRegister on a host where no CUDA IPC handle can be opened.
CUDA_REGISTER_REFUSED = "failed to register shared memory region: invalid args"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _code(error: DyntritonError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.status, grpc.StatusCode.INTERNAL)


class _SystemSharedMemory:
    def __init__(self, registry: SharedMemoryRegistry):
        self.registry = registry

    async def status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = service_pb2.SystemSharedMemoryStatusResponse()
        try:
            for region in await self.registry.status(request.name):
                entry = response.regions[region.name]
                entry.name, entry.key, entry.offset, entry.byte_size = (
                    region.name,
                    region.key,
                    region.offset,
                    region.byte_size,
                )
        except DyntritonError as exc:
            await context.abort(_code(exc), exc.message)
        return response

    async def register(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await self.registry.register(request.name, request.key, request.offset, request.byte_size)
        except DyntritonError as exc:
            await context.abort(_code(exc), exc.message)
        return service_pb2.SystemSharedMemoryRegisterResponse()

    async def unregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await self.registry.unregister(request.name)
        except DyntritonError as exc:
            await context.abort(_code(exc), exc.message)
        return service_pb2.SystemSharedMemoryUnregisterResponse()


async def _cuda_status(request: Any, context: grpc.aio.ServicerContext) -> Any:
    if request.name:  # nothing is ever registered
        await context.abort(grpc.StatusCode.NOT_FOUND, f"Unable to find cuda shared memory region: '{request.name}'")
    return service_pb2.CudaSharedMemoryStatusResponse()


async def _cuda_register(_request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError(CUDA_REGISTER_REFUSED).message)
    raise AssertionError("unreachable")


async def _cuda_unregister(_request: Any, _context: grpc.aio.ServicerContext) -> Any:
    return service_pb2.CudaSharedMemoryUnregisterResponse()


def shared_memory_handlers(service: InferenceService) -> dict[str, Any]:
    """The shared-memory RPC handlers by method name (system ones only when ``service`` keeps a registry)."""

    def unary(method: Handler, name: str) -> Any:
        request_type = getattr(service_pb2, f"{name}Request")
        response_type = getattr(service_pb2, f"{name}Response")
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )

    handlers = {
        "CudaSharedMemoryStatus": unary(_cuda_status, "CudaSharedMemoryStatus"),
        "CudaSharedMemoryRegister": unary(_cuda_register, "CudaSharedMemoryRegister"),
        "CudaSharedMemoryUnregister": unary(_cuda_unregister, "CudaSharedMemoryUnregister"),
    }
    registry = getattr(service, "shared_memory", None)
    if registry is not None:
        system = _SystemSharedMemory(registry)
        handlers["SystemSharedMemoryStatus"] = unary(system.status, "SystemSharedMemoryStatus")
        handlers["SystemSharedMemoryRegister"] = unary(system.register, "SystemSharedMemoryRegister")
        handlers["SystemSharedMemoryUnregister"] = unary(system.unregister, "SystemSharedMemoryUnregister")
    return handlers
