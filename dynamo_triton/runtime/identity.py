"""What the server says it is (KServe ``ServerMetadata``), one answer for every protocol frontend.

Triton's clients and tools check ``name == "triton"`` (its example clients assert it), so the
frontend answers as the Triton it fronts: name ``triton`` and the Triton version the workers
run. dyntriton's own version is reported separately (HTTP ``/v2`` ``server`` entry, logs).
The extension list is exactly what the frontends implement, the same on gRPC and HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynamo_triton.frontend import InferenceService

__all__ = ["DEFAULT_SERVER_NAME", "EXTENSIONS", "ServerIdentity", "dyntriton_version", "server_identity"]

DEFAULT_SERVER_NAME = "triton"

#: KServe/Triton protocol extensions that work through dyntriton's frontends (one server-wide list,
#: as Triton's, reported alike on gRPC and HTTP; in Triton's order). model_repository is index, load
#: and unload over the cluster (docs/model-control.md; load and unload need workers started with
#: ``--model-control explicit``, as Triton needs its explicit mode). system_shared_memory is listed when
#: the frontend keeps a region registry (docs/shared-memory.md). Not listed, because they are not
#: available through the frontend: model_repository(unload_dependents), schedule_policy,
#: cuda_shared_memory (answered as Triton answers on a host without a GPU). Triton's
#: REST ``generate`` endpoints work too but are not an extension Triton lists.
EXTENSIONS = (
    "classification",
    "sequence",
    "model_repository",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
)

#: Offered when the service keeps the cluster's settings (its ``settings`` attribute, runtime/cluster_settings.py).
_SETTINGS = ("trace", "logging")


def dyntriton_version() -> str:
    """The installed dynamo-triton version ("0" when running from an uninstalled tree)."""
    try:
        return version("dynamo-triton")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class ServerIdentity:
    """The ``ServerMetadata`` answer.

    :param name: ``triton`` unless the operator set ``--server-name``.
    :param version: the Triton version of the live workers ("" before any worker registered).
    :param extensions: the supported protocol extensions.
    :param server_version: dyntriton's own version.
    """

    name: str
    version: str
    extensions: tuple[str, ...]
    server_version: str


def server_identity(service: InferenceService, name: str | None = None) -> ServerIdentity:
    """The identity the frontends report, from the models the workers serve now."""
    versions = sorted({model.server_version for model in service.models() if model.server_version})
    return ServerIdentity(
        name=name or DEFAULT_SERVER_NAME,
        version=versions[-1] if versions else "",
        extensions=_extensions(service),
        server_version=dyntriton_version(),
    )


def _extensions(service: InferenceService) -> tuple[str, ...]:
    """EXTENSIONS less model_repository without model control, system_shared_memory without a region
    registry, trace and logging without the cluster's settings."""
    missing = set()
    if service.repository is None:
        missing.add("model_repository")
    if getattr(service, "shared_memory", None) is None:
        missing.add("system_shared_memory")
    if getattr(service, "settings", None) is None:
        missing.update(_SETTINGS)
    return tuple(name for name in EXTENSIONS if name not in missing)
