"""Triton's restricted protocol groups: which call belongs to which group, and whether a call may pass.

``--grpc-restricted-protocol`` and ``--http-restricted-api`` take Triton's spelling,
``<group>[,<group>...]:<key>=<value>`` (repeatable; a group in one spec only). A call of a
restricted group passes only when it carries the header ``<key>`` (HTTP) or
``triton-grpc-protocol-<key>`` (gRPC metadata) with exactly ``<value>``; otherwise it is
answered as Triton 2.51 answers it: gRPC UNAVAILABLE "This protocol is restricted, expecting
header 'triton-grpc-protocol-<key>'", HTTP 403 ``{"error":"This API is restricted, expecting
header '<key>'"}``.

The groups and their calls are Triton's (``restricted_features.h``). The frontend's own
operator endpoints (``/health``, ``/live``, ``/metrics``) and gRPC's standard health and
reflection services belong to no group, as Triton's metrics port and its gRPC health service.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "GROUPS",
    "GRPC_GROUPS",
    "GRPC_HEADER_PREFIX",
    "Restriction",
    "Restrictions",
    "http_group",
    "parse_restrictions",
]

#: Triton's group names, in Triton's order.
GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)

#: What Triton puts before a gRPC restriction's key to name the metadata it reads.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

#: ``inference.GRPCInferenceService`` method -> its group.
GRPC_GROUPS: Mapping[str, str] = {
    "ServerLive": "health",
    "ServerReady": "health",
    "ModelReady": "health",
    "ServerMetadata": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "inference",
    "ModelStreamInfer": "inference",
    "ModelConfig": "model-config",
    "ModelStatistics": "statistics",
    "RepositoryIndex": "model-repository",
    "RepositoryModelLoad": "model-repository",
    "RepositoryModelUnload": "model-repository",
    "SystemSharedMemoryStatus": "shared-memory",
    "SystemSharedMemoryRegister": "shared-memory",
    "SystemSharedMemoryUnregister": "shared-memory",
    "CudaSharedMemoryStatus": "shared-memory",
    "CudaSharedMemoryRegister": "shared-memory",
    "CudaSharedMemoryUnregister": "shared-memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}

_MODEL = r"/v2/models/[^/]+(?:/versions/[^/]+)?"
#: REST path patterns -> group, first match wins (Triton's routes).
_HTTP_GROUPS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), group)
    for pattern, group in (
        (r"/v2/health/(?:live|ready)", "health"),
        (_MODEL + r"/ready", "health"),
        (r"/v2/repository(?:/.*)?", "model-repository"),
        (r"/v2/models/stats", "statistics"),
        (_MODEL + r"/stats", "statistics"),
        (_MODEL + r"/config", "model-config"),
        (_MODEL + r"/(?:infer|generate|generate_stream)", "inference"),
        (_MODEL + r"/trace/setting", "trace"),
        (r"/v2/trace/setting", "trace"),
        (r"/v2/logging", "logging"),
        (r"/v2/(?:systemsharedmemory|cudasharedmemory)(?:/.*)?", "shared-memory"),
        (_MODEL, "metadata"),
        (r"/v2", "metadata"),
    )
)


def http_group(path: str) -> str | None:
    """The group of a REST path (``/v2/models/m/infer`` -> ``inference``), or None for paths in no group."""
    path = path.rstrip("/") or "/"
    for pattern, group in _HTTP_GROUPS:
        if pattern.fullmatch(path):
            return group
    return None


@dataclass(frozen=True)
class Restriction:
    """The header a group's calls must carry, and its value (``header`` as the protocol reads it)."""

    header: str
    value: str


class Restrictions:
    """Restricted groups of one protocol: group -> :class:`Restriction`."""

    def __init__(self, restrictions: Mapping[str, Restriction], *, grpc: bool):
        self._restrictions = dict(restrictions)
        self._grpc = grpc

    def __bool__(self) -> bool:
        return bool(self._restrictions)

    def __repr__(self) -> str:
        return f"Restrictions({sorted(self._restrictions)}, grpc={self._grpc})"

    def groups(self) -> list[str]:
        """The restricted groups, in Triton's order."""
        return [group for group in GROUPS if group in self._restrictions]

    def refusal(self, group: str | None, header: Callable[[str], str | None]) -> str | None:
        """None when a call of ``group`` may pass, else Triton's message for the refusal.

        :param header: reads a header (gRPC metadata key, lower case; HTTP header, any case).
        """
        if group is None:
            return None
        restriction = self._restrictions.get(group)
        if restriction is None:
            return None
        name = restriction.header.lower() if self._grpc else restriction.header
        if header(name) == restriction.value:
            return None
        if self._grpc:
            return f"This protocol is restricted, expecting header '{restriction.header}'"
        return f"This API is restricted, expecting header '{restriction.header}'"


def parse_restrictions(specs: Iterable[str], *, grpc: bool) -> Restrictions:
    """Parse ``<group>[,<group>...]:<key>=<value>`` specs as Triton does.

    :param grpc: the gRPC flavour (the header is ``triton-grpc-protocol-<key>``).
    :raises ValueError: a malformed spec, an unknown group, or a group in two specs (Triton's words).
    """
    option = "--grpc-restricted-protocol" if grpc else "--http-restricted-api"
    kind = "protocol" if grpc else "api"
    restrictions: dict[str, Restriction] = {}
    for spec in specs:
        groups, colon, setting = spec.partition(":")
        key, equals, value = setting.partition("=")
        if not colon or not equals or not groups or not key:
            raise ValueError(
                f"{option} option format is '<{kind}s>:<key>=<value>' "
                f"(e.g. model-repository,logging:admin-key=secret), got {spec!r}"
            )
        for group in (name.strip() for name in groups.split(",")):
            if group not in GROUPS:
                raise ValueError(f"unknown restricted {kind} '{group}' (groups: {', '.join(GROUPS)})")
            if group in restrictions:
                raise ValueError(f"restricted {kind} '{group}' can not be specified in multiple config groups")
            restrictions[group] = Restriction((GRPC_HEADER_PREFIX if grpc else "") + key, value)
    return Restrictions(restrictions, grpc=grpc)
