"""The ``kserve-v1`` frontend plugin: KServe V1 REST (``/v1/models/{name}[:predict]``) over the core's pipeline.

Registering is cheap: the settings class is a dataclass, the server (aiohttp) is imported by the factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynamo_triton import hookimpl
from dynamo_triton.frontend import FrontendSettings
from dynamo_triton.settings import setting

if TYPE_CHECKING:
    from dynamo_triton.frontend import Frontend, InferenceService
    from dynamo_triton.registry import FrontendRegister


@dataclass(frozen=True)
class V1Settings(FrontendSettings):
    """The common frontend settings (server name, TLS) plus where the V1 port listens."""

    __panel__ = "kserve-v1 frontend"
    __label__ = "KServe V1"

    host: str = setting(
        "127.0.0.1", "--v1-host", envvar="DYN_V1_HOST", help="Interface the KServe V1 port binds (0.0.0.0: every one)."
    )
    port: int = setting(8080, "--v1-port", envvar="DYN_V1_PORT", help="KServe V1 REST port (0: any free port).")


def _factory(settings: V1Settings, service: InferenceService) -> Frontend:
    from dyntriton_frontend_kserve_v1.server import V1Frontend

    return V1Frontend(settings, service)


@hookimpl
def dyntriton_register_frontends(register: FrontendRegister) -> None:
    register("kserve-v1", _factory, settings=V1Settings, summary="KServe V1 REST: /v1/models/{name}[:predict]")
