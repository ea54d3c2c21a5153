"""Model cards: what a worker publishes about each model it serves, and where they live in the store.

A card is JSON, versioned by its ``schema`` field, stored at::

    dyntriton/v1/{namespace}/models/{model}/{instance_id}

under the worker's lease, so it disappears when the worker dies. Other tools
may read cards; the format is documented in ``docs/model-card.md`` and only
grows (new fields are optional, readers ignore fields they do not know).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dynamo_triton.errors import ConfigError

__all__ = ["CARD_SCHEMA", "ModelCard", "card_key", "models_prefix", "parse_card_key"]

CARD_SCHEMA = "dyntriton.model-card/v1"
_ROOT = "dyntriton/v1"


def models_prefix(namespace: str) -> str:
    """The prefix under which every card of ``namespace`` lives (ends with ``/``)."""
    if not namespace or "/" in namespace:
        raise ConfigError(f"namespace must be a non-empty name without '/', got {namespace!r}")
    return f"{_ROOT}/{namespace}/models/"


def card_key(namespace: str, model: str, instance_id: str) -> str:
    """The store key of one instance's card for ``model``."""
    return f"{models_prefix(namespace)}{model}/{instance_id}"


def parse_card_key(namespace: str, key: str) -> tuple[str, str] | None:
    """``(model, instance_id)`` of a card key, or None if ``key`` is not one."""
    prefix = models_prefix(namespace)
    if not key.startswith(prefix):
        return None
    model, _, instance_id = key[len(prefix) :].rpartition("/")
    if not model or not instance_id:
        return None
    return model, instance_id


@dataclass(frozen=True)
class ModelCard:
    """One worker instance's announcement of one model.

    :param config: the Triton ``ModelConfig`` as protobuf JSON (``json_format.MessageToDict``).
    :param metadata: the KServe ``ModelMetadataResponse`` as protobuf JSON.
    :param address: where the instance's transport server listens (e.g. ``tcp://10.0.0.5:40123``).
    :param transport: the transport plugin name that reaches ``address``.
    :param worker: free-form facts about the worker (host, pid, start time) for operators.
    """

    model: str
    version: str
    instance_id: str
    address: str
    transport: str
    decoupled: bool
    config: dict[str, Any]
    metadata: dict[str, Any]
    worker: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """Serialize with the schema tag, keys sorted, UTF-8."""
        body = {"schema": CARD_SCHEMA, **self.__dict__}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ModelCard:
        """Parse a card; raises ConfigError saying what is wrong with it."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model card is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("schema") != CARD_SCHEMA:
            schema = body.get("schema") if isinstance(body, dict) else None
            raise ConfigError(f"model card schema is {schema!r}, expected {CARD_SCHEMA!r}")
        try:
            return cls(
                model=str(body["model"]),
                version=str(body["version"]),
                instance_id=str(body["instance_id"]),
                address=str(body["address"]),
                transport=str(body["transport"]),
                decoupled=bool(body["decoupled"]),
                config=dict(body["config"]),
                metadata=dict(body["metadata"]),
                worker=dict(body.get("worker", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"model card is missing or has a bad field: {exc}") from exc
