"""The ``kserve-grpc`` frontend plugin: KServe v2 gRPC (inference.GRPCInferenceService), health, reflection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_frontend_kserve_grpc.options import GrpcSettings

if TYPE_CHECKING:
    from dynamo_triton.frontend import InferenceService
    from dynamo_triton.registry import FrontendRegister


def _factory(settings: GrpcSettings, service: InferenceService) -> Any:
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    return KServeGrpcFrontend(settings, service)


@hookimpl
def dyntriton_register_frontends(register: FrontendRegister) -> None:
    register(
        "kserve-grpc",
        _factory,
        settings=GrpcSettings,
        traits=("default",),
        summary="KServe v2 gRPC: any tritonclient / perf_analyzer works unchanged",
    )
