"""The etcd store's settings (cheap to import: the CLI builds its options from them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import click

from dynamo_triton.settings import setting

__all__ = ["DEFAULT_ENDPOINTS", "EtcdOptions"]

DEFAULT_ENDPOINTS = "http://localhost:2379"

_PEM = click.Path(dir_okay=False)


@dataclass(frozen=True)
class EtcdOptions:
    """What the etcd store's factory receives; ``https://`` endpoints or a CA file turn TLS on."""

    __panel__ = "etcd store"

    endpoints: str = setting(
        DEFAULT_ENDPOINTS,
        "--etcd-endpoints",
        envvar="ETCD_ENDPOINTS",
        help="etcd client URLs, comma-separated (--store-kv etcd).",
    )
    ca_file: str | None = setting(None, "--etcd-cacert", envvar="ETCD_CACERT", type=_PEM, help="etcd CA (PEM).")
    cert_file: str | None = setting(
        None, "--etcd-cert", envvar="ETCD_CERT", type=_PEM, help="etcd client certificate (PEM), for mutual TLS."
    )
    key_file: str | None = setting(None, "--etcd-key", envvar="ETCD_KEY", type=_PEM, help="Its private key (PEM).")
    user: str | None = setting(None, "--etcd-user", envvar="ETCD_USERNAME", help="etcd user (authentication).")
    password: str | None = setting(
        None, "--etcd-password", envvar="ETCD_PASSWORD", secret=True, help="etcd password (prefer the env var)."
    )
    timeout: float = 5.0

    def as_options(self) -> dict[str, Any]:
        """Every field by name, for :meth:`EtcdSettings.from_options`."""
        return asdict(self)
