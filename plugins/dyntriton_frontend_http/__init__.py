"""The ``http`` frontend plugin: KServe v2 REST with Triton's extensions, health, liveness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any, service: Any) -> Any:
    from dyntriton_frontend_http.server import HttpFrontend

    return HttpFrontend(settings, service)


@hookimpl
def dyntriton_register_frontends(register: Register) -> None:
    register("http", _factory, summary="HTTP: KServe v2 REST (JSON, binary tensors, generate/SSE), /health, /metrics")
