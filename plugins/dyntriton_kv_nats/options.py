"""The nats store's settings: the NATS connection (shared with the nats transport) and the bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
from dyntriton_transport_nats.options import NatsConnectionOptions

from dynamo_triton.settings import setting

__all__ = ["NatsKVOptions"]


@dataclass(frozen=True)
class NatsKVOptions(NatsConnectionOptions):
    """What the nats store's factory receives.

    :param bucket: JetStream KV bucket name (letters, digits, ``-``, ``_``).
    :param storage: ``file`` (survives a nats-server restart) or ``memory``.
    :param replicas: bucket replicas in a JetStream cluster (1 on a single server).
    :param timeout: seconds a connect and each store call may take.
    """

    __panel__ = "nats store"

    bucket: str = setting(
        "dyntriton",
        "--nats-kv-bucket",
        envvar="DYN_NATS_KV_BUCKET",
        help="JetStream KV bucket of the nats store (letters, digits, - and _).",
    )
    storage: str = setting(
        "file",
        "--nats-kv-storage",
        type=click.Choice(["file", "memory"]),
        help="Where the bucket keeps its data: file (survives a nats-server restart) or memory.",
    )
    replicas: int = setting(
        1, "--nats-kv-replicas", type=click.IntRange(min=1), help="Bucket replicas in a JetStream cluster."
    )
    timeout: float = 5.0

    def as_options(self) -> dict[str, Any]:
        """Every field under the option names :meth:`NatsKVSettings.from_options` takes."""
        return {
            **self.connection_options(),
            "bucket": self.bucket,
            "storage": self.storage,
            "replicas": self.replicas,
            "timeout": self.timeout,
        }
