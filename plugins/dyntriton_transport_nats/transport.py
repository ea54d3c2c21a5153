"""The nats transport object: makes servers and clients sharing one NATS configuration."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from dyntriton_transport_nats.client import NatsClient
from dyntriton_transport_nats.connection import NatsSettings
from dyntriton_transport_nats.options import NatsTransportSettings
from dyntriton_transport_nats.server import NatsServer

__all__ = ["NatsTransport"]


@dataclass
class NatsTransport:
    """Request/response over NATS subjects; see :mod:`dyntriton_transport_nats.wire`.

    :param settings: how to reach NATS (servers, TLS, credentials).
    :param subject_prefix: workers listen on ``{subject_prefix}.{unique id}``.
    :param heartbeat: seconds without a sign of life before a client reports a worker
        unresponsive (0: never); see :mod:`dyntriton_transport_nats.client`.
    :param max_chunk: largest message payload, in bytes (None: the server's ``max_payload``).
    """

    settings: NatsSettings = field(default_factory=NatsSettings)
    subject_prefix: str = "dyntriton.worker"
    heartbeat: float = 1.0
    max_chunk: int | None = None
    name: str = "nats"

    @classmethod
    def from_settings(cls, settings: NatsTransportSettings) -> NatsTransport:
        """The transport ``settings`` describe: the NATS connection, the subject prefix, the heartbeat.

        With NATS the request plane is secured at the NATS server: the common ``tls_ca``/``tls_cert``/
        ``tls_key`` (``--transport-tls-*``) become this process's TLS to NATS when given (over
        ``--nats-ca``/``--nats-cert``/``--nats-key``), and ``token`` its NATS authorization token; who may
        publish to workers' subjects is the NATS server's permissions. ``heartbeat`` is the clients'
        liveness limit.
        """
        options = settings.connection_options()
        options.update(
            ca_file=settings.tls_ca or options["ca_file"],
            cert_file=settings.tls_cert or options["cert_file"],
            key_file=settings.tls_key or options["key_file"],
            token=settings.token or options["token"],
        )
        return cls(
            settings=NatsSettings.from_options(options),
            subject_prefix=str(settings.options.get("subject_prefix") or settings.subject_prefix),
            heartbeat=settings.heartbeat,
        )

    def server(self, host: str = "127.0.0.1", port: int = 0) -> NatsServer:
        """A server on a fresh subject. ``host`` and ``port`` do not apply: workers dial out to NATS."""
        return NatsServer(self.settings, f"{self.subject_prefix}.{uuid.uuid4().hex}", max_chunk=self.max_chunk)

    def client(self) -> NatsClient:
        """A client with its own NATS connection."""
        return NatsClient(self.settings, heartbeat=self.heartbeat, max_chunk=self.max_chunk)
