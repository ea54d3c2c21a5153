"""The ``http`` frontend plugin: KServe v2 REST with Triton's extensions, health, liveness and Prometheus metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_frontend_http.options import HttpSettings

if TYPE_CHECKING:
    from dynamo_triton.frontend import InferenceService
    from dynamo_triton.registry import FrontendRegister


def _factory(settings: HttpSettings, service: InferenceService) -> Any:
    from dyntriton_frontend_http.server import HttpFrontend

    return HttpFrontend(settings, service)


@hookimpl
def dyntriton_register_frontends(register: FrontendRegister) -> None:
    register(
        "http",
        _factory,
        settings=HttpSettings,
        traits=("default",),
        summary="HTTP: KServe v2 REST (JSON, binary tensors, generate/SSE), /health, /metrics",
    )
