"""The HTTP frontend's settings (cheap to import: no aiohttp)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from dynamo_triton.frontend import FrontendSettings, restricted_setting
from dynamo_triton.settings import setting

__all__ = ["DEFAULT_MAX_INPUT_SIZE", "HttpSettings"]

#: Largest request body accepted, after decompression (Triton's HTTP default: 64 MiB).
DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class HttpSettings(FrontendSettings):
    """What the ``http`` factory receives: the common frontend settings and HTTP's own.

    :param max_input_size: largest request body, in bytes, after decompression (413 beyond it).
    :param restricted: Triton's restricted API specs (``GROUPS:KEY=VALUE``).
    :param http_tls: with the common ``tls_cert``, serve HTTPS (False: plain HTTP behind a proxy).
    """

    __panel__ = "http frontend"

    host: str = setting(
        "127.0.0.1", "--http-host", envvar="DYN_HTTP_HOST", help="Interface the HTTP port binds (0.0.0.0: every one)."
    )
    port: int = setting(
        8000,
        "--http-port",
        envvar="DYN_HTTP_PORT",
        type=click.IntRange(-1, 65535),
        help="HTTP port: KServe v2 REST, /health, /live, /metrics; 0-65535 (0 = any free port, -1 = no HTTP, "
        "like leaving http out of --frontend).",
    )
    max_input_size: int = setting(
        DEFAULT_MAX_INPUT_SIZE,
        "--http-max-input-size",
        type=click.IntRange(min=1),
        help="Largest HTTP request body accepted, in bytes, after decompression (413 beyond it).",
    )
    restricted: tuple[str, ...] = restricted_setting("--http-restricted-api", "DYN_HTTP_RESTRICTED_API", grpc=False)
    http_tls: bool = setting(
        True,
        "--http-tls",
        secondary="--no-http-tls",
        envvar="DYN_HTTP_TLS",
        help="With --tls-cert, serve the HTTP port over TLS too. --no-http-tls keeps it plain, for a "
        "TLS-terminating proxy in front of it or plain probes on 127.0.0.1.",
    )

    def listener(self, address: str) -> str:
        """``HTTP https://127.0.0.1:8000``: the URL clients use."""
        return f"HTTP {'https' if self.serves_tls() else 'http'}://{address}"

    def serves_tls(self) -> bool:
        """With ``--no-http-tls`` the port stays plain even with ``--tls-cert``."""
        return bool(self.tls_cert) and self.http_tls
