"""The KServe gRPC frontend's settings (cheap to import: no grpc)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from dynamo_triton.frontend import PORT, FrontendSettings, restricted_setting
from dynamo_triton.limits import DEFAULT_STREAM_MAX_PENDING_BYTES, DEFAULT_STREAM_WINDOW
from dynamo_triton.settings import setting

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "DEFAULT_MAX_MESSAGE", "GrpcSettings"]

#: Largest gRPC message accepted or sent, in bytes.
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024
#: Seconds a draining frontend waits for its clients to leave before it ends what is left.
DEFAULT_DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class GrpcSettings(FrontendSettings):
    """What the ``kserve-grpc`` factory receives: the common frontend settings and gRPC's own.

    :param max_message_size: largest gRPC message accepted or sent, in bytes.
    :param stream_window: requests one ModelStreamInfer stream may have running or unsent.
    :param stream_max_pending_bytes: bytes one stream may hold before it stops reading.
    :param restricted: Triton's restricted protocol specs (``GROUPS:KEY=VALUE``).
    :param drain_timeout: seconds a draining frontend waits for its clients to leave.
    """

    __panel__ = "kserve-grpc frontend"
    __label__ = "KServe gRPC"

    host: str = setting(
        "127.0.0.1",
        "--grpc-host",
        envvar="DYN_GRPC_HOST",
        help="Interface the KServe gRPC port binds (0.0.0.0: every interface, for clients on other hosts).",
    )
    port: int = setting(
        8787, "--grpc-port", envvar="DYN_GRPC_PORT", type=PORT, help="KServe gRPC port, 0-65535 (0 = any free port)."
    )
    max_message_size: int = setting(
        DEFAULT_MAX_MESSAGE,
        "--max-message-size",
        type=click.IntRange(min=1),
        help="Largest gRPC message accepted or sent, in bytes.",
    )
    stream_window: int = setting(
        DEFAULT_STREAM_WINDOW,
        "--stream-window",
        type=click.IntRange(min=1),
        help="Requests one ModelStreamInfer stream may have running or unsent before the frontend stops reading.",
    )
    restricted: tuple[str, ...] = restricted_setting(
        "--grpc-restricted-protocol", "DYN_GRPC_RESTRICTED_PROTOCOL", grpc=True
    )
    stream_max_pending_bytes: int = DEFAULT_STREAM_MAX_PENDING_BYTES
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
