"""Worker cards: what a worker publishes about itself (not per model), for ``status`` and ``top``.

A worker puts one card at::

    dyntriton/v1/{namespace}/workers/{instance_id}

under the same lease as its model cards, so it disappears when the worker dies. Model cards
say what is served where (frontends route on them); the worker card says where the worker's
system port is (its ``/stats``, ``/metrics``) and whether it is ``serving`` or ``draining``:
a draining worker has already withdrawn its model cards, so only this card still shows it.
Schema ``dyntriton.worker-card/v1`` (docs/status.md); it only grows, readers ignore what they
do not know.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from dynamo_triton.errors import ConfigError
from dynamo_triton.runtime.cards import models_prefix

__all__ = [
    "WORKER_CARD_SCHEMA",
    "WorkerCard",
    "published_host",
    "worker_card_key",
    "workers_prefix",
]

WORKER_CARD_SCHEMA = "dyntriton.worker-card/v1"

_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def workers_prefix(namespace: str) -> str:
    """The prefix of every worker card of ``namespace`` (ends with ``/``)."""
    return models_prefix(namespace).removesuffix("models/") + "workers/"


def worker_card_key(namespace: str, instance_id: str) -> str:
    """The store key of one worker's card."""
    return workers_prefix(namespace) + instance_id


def published_host(bind_host: str, fallback: str) -> str:
    """The host others dial for a listener bound to ``bind_host``: itself, or ``fallback`` for a wildcard.

    IPv6 addresses get brackets, so ``f"{host}:{port}"`` is dialable.
    """
    host = fallback if bind_host in _WILDCARDS else bind_host
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@dataclass(frozen=True)
class WorkerCard:
    """One worker instance's announcement of itself.

    :param state: ``serving``, or ``draining`` once it stopped taking requests and finishes those in flight.
    :param address: its transport address (as in its model cards).
    :param system_url: base URL of its system port (``http://host:port``), "" when it has none.
    :param models: the models it serves (or served, while draining).
    """

    instance_id: str
    state: str
    address: str
    transport: str
    host: str
    pid: int
    started: float
    system_url: str
    models: list[str] = field(default_factory=list)
    server_name: str = ""
    server_version: str = ""
    lease_ttl: float = 0.0

    def to_json(self) -> bytes:
        """Serialize with the schema tag, keys sorted, UTF-8."""
        return json.dumps({"schema": WORKER_CARD_SCHEMA, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> WorkerCard:
        """Parse a card; raises ConfigError saying what is wrong with it."""
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"worker card is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("schema") != WORKER_CARD_SCHEMA:
            schema = body.get("schema") if isinstance(body, dict) else None
            raise ConfigError(f"worker card schema is {schema!r}, expected {WORKER_CARD_SCHEMA!r}")
        try:
            return cls(
                instance_id=str(body["instance_id"]),
                state=str(body["state"]),
                address=str(body.get("address", "")),
                transport=str(body.get("transport", "")),
                host=str(body.get("host", "")),
                pid=int(body.get("pid", 0)),
                started=float(body.get("started", 0.0)),
                system_url=str(body.get("system_url", "")),
                models=[str(name) for name in body.get("models", [])],
                server_name=str(body.get("server_name", "")),
                server_version=str(body.get("server_version", "")),
                lease_ttl=float(body.get("lease_ttl", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"worker card is missing or has a bad field: {exc}") from exc
