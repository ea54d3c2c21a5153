"""The ``http`` frontend plugin: health, liveness, Prometheus metrics and KServe v2 REST metadata/health."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory(settings: Any, service: Any) -> Any:
    from dyntriton_frontend_http.server import HttpFrontend

    return HttpFrontend(settings, service)


@hookimpl
def dyntriton_register_frontends(register: Register) -> None:
    register("http", _factory, summary="HTTP: /health, /live, /metrics, KServe v2 REST health and metadata")
