"""NATS connection options shared by the nats transport and the nats KV store, and the transport's settings.

One declaration per option (the functions below): the store and the transport both use them, so
``--nats-server`` and the others show once and feed both. Cheap to import (no nats-py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from dynamo_triton.settings import setting
from dynamo_triton.transport import TransportSettings

__all__ = ["DEFAULT_SERVER", "NatsConnectionOptions", "NatsTransportSettings"]

DEFAULT_SERVER = "nats://localhost:4222"

_PEM = click.Path(dir_okay=False)


@dataclass(frozen=True)
class NatsConnectionOptions:
    """How to reach NATS, as options (see :mod:`dyntriton_transport_nats.connection` for their meaning)."""

    __panel__ = "NATS (nats store and transport)"

    servers: str = setting(
        DEFAULT_SERVER,
        "--nats-server",
        envvar="NATS_SERVER",
        help="NATS server URLs, comma-separated (--store-kv nats, --transport nats); tls:// turns TLS on.",
    )
    ca_file: str | None = setting(
        None, "--nats-ca", envvar="NATS_CA", type=_PEM, help="CA bundle (PEM) the NATS server's certificate chains to."
    )
    cert_file: str | None = setting(
        None, "--nats-cert", envvar="NATS_CERT", type=_PEM, help="Client certificate (PEM) for mutual TLS to NATS."
    )
    key_file: str | None = setting(None, "--nats-key", envvar="NATS_KEY", type=_PEM, help="Its private key (PEM).")
    creds_file: str | None = setting(
        None, "--nats-creds", envvar="NATS_CREDS", type=_PEM, help="NATS .creds file (user JWT and nkey seed)."
    )
    user: str | None = setting(None, "--nats-user", envvar="NATS_USER", help="NATS user name.")
    password: str | None = setting(
        None, "--nats-password", envvar="NATS_PASSWORD", secret=True, help="NATS password (prefer the env var)."
    )
    nats_token: str | None = setting(
        None, "--nats-token", envvar="NATS_TOKEN", secret=True, help="NATS authorization token (prefer the env var)."
    )

    def connection_options(self) -> dict[str, Any]:
        """These fields under the option names :meth:`NatsSettings.from_options` takes."""
        return {
            "servers": self.servers,
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "creds_file": self.creds_file,
            "user": self.user,
            "password": self.password,
            "token": self.nats_token,
        }


@dataclass(frozen=True)
class NatsTransportSettings(TransportSettings, NatsConnectionOptions):
    """What the nats transport's factory receives: the common request-plane settings, the connection,
    and the subject prefix workers listen under."""

    __panel__ = "nats transport"

    subject_prefix: str = setting(
        "dyntriton.worker",
        "--nats-subject-prefix",
        envvar="DYNTRITON_NATS_SUBJECT_PREFIX",
        help="Workers listen on PREFIX.<id> (nats transport).",
    )
