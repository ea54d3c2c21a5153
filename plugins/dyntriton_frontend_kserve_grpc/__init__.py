"""The ``kserve-grpc`` frontend plugin: KServe v2 gRPC (inference.GRPCInferenceService), health, reflection."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any, service: Any) -> Any:
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    return KServeGrpcFrontend(settings, service)


@hookimpl
def dyntriton_register_frontends(register: Register) -> None:
    register("kserve-grpc", _factory, summary="KServe v2 gRPC: any tritonclient / perf_analyzer works unchanged")
