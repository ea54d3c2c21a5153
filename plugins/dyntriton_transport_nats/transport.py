"""The nats transport object: makes servers and clients sharing one NATS configuration."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dyntriton_transport_nats.client import NatsClient
from dyntriton_transport_nats.connection import NatsSettings
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
    def from_env(cls, env: Mapping[str, str] | None = None) -> NatsTransport:
        """Settings from the environment: the NATS variables of
        :mod:`dyntriton_transport_nats.connection` (``NATS_SERVER``, ``NATS_CA``, ``NATS_CREDS``...),
        ``DYNTRITON_NATS_SUBJECT_PREFIX`` and ``DYN_TRANSPORT_HEARTBEAT`` (seconds, the CLI's
        ``--transport-heartbeat``); unset ones keep their defaults.
        """
        env = os.environ if env is None else env
        return cls(
            settings=NatsSettings.from_options({}, env),
            subject_prefix=env.get("DYNTRITON_NATS_SUBJECT_PREFIX") or "dyntriton.worker",
            heartbeat=float(env.get("DYN_TRANSPORT_HEARTBEAT") or 1.0),
        )

    @classmethod
    def from_settings(cls, settings: Any = None, env: Mapping[str, str] | None = None) -> NatsTransport:
        """:meth:`from_env`, then what a :class:`~dynamo_triton.transport.TransportSettings` asks for.

        With NATS the request plane is secured at the NATS server: ``tls_ca``/``tls_cert``/``tls_key``
        become this process's TLS to NATS (``NATS_CA``/``NATS_CERT``/``NATS_KEY``) and ``token`` its
        NATS authorization token (``NATS_TOKEN``); who may publish to workers' subjects is the NATS
        server's permissions. ``heartbeat`` is the clients' liveness limit. ``options`` may set
        ``subject_prefix``.
        """
        transport = cls.from_env(env)
        if settings is None:
            return transport
        nats = dataclasses.replace(
            transport.settings,
            ca_file=settings.tls_ca or transport.settings.ca_file,
            cert_file=settings.tls_cert or transport.settings.cert_file,
            key_file=settings.tls_key or transport.settings.key_file,
            token=settings.token or transport.settings.token,
        )
        options = dict(settings.options)
        return dataclasses.replace(
            transport,
            settings=nats,
            subject_prefix=str(options.get("subject_prefix") or transport.subject_prefix),
            heartbeat=settings.heartbeat,
        )

    def server(self, host: str = "127.0.0.1", port: int = 0) -> NatsServer:
        """A server on a fresh subject. ``host`` and ``port`` do not apply: workers dial out to NATS."""
        return NatsServer(self.settings, f"{self.subject_prefix}.{uuid.uuid4().hex}", max_chunk=self.max_chunk)

    def client(self) -> NatsClient:
        """A client with its own NATS connection."""
        return NatsClient(self.settings, heartbeat=self.heartbeat, max_chunk=self.max_chunk)
