"""Model cards: keys, round trip, and clear errors for bad cards."""

from __future__ import annotations

import json

import pytest

from dynamo_triton.errors import ConfigError
from dynamo_triton.runtime.cards import CARD_SCHEMA, ModelCard, card_key, models_prefix, parse_card_key


def make_card(**overrides: object) -> ModelCard:
    fields: dict[str, object] = {
        "model": "identity",
        "version": "1",
        "instance_id": "abc123",
        "address": "tcp://127.0.0.1:5000",
        "transport": "tcp",
        "decoupled": False,
        "config": {"name": "identity", "backend": "python"},
        "metadata": {"name": "identity", "versions": ["1"]},
        "worker": {"pid": 1},
    }
    fields.update(overrides)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_card_key_layout_is_versioned_and_namespaced() -> None:
    assert card_key("dynamo", "identity", "abc") == "dyntriton/v1/dynamo/models/identity/abc"
    assert parse_card_key("dynamo", "dyntriton/v1/dynamo/models/identity/abc") == ("identity", "abc")
    assert parse_card_key("dynamo", "dyntriton/v1/other/models/identity/abc") is None
    assert parse_card_key("dynamo", models_prefix("dynamo") + "no-instance") is None


def test_namespace_with_slash_is_rejected() -> None:
    with pytest.raises(ConfigError, match="namespace"):
        models_prefix("a/b")


def test_card_round_trips_through_json() -> None:
    card = make_card(decoupled=True)
    raw = card.to_json()
    assert json.loads(raw)["schema"] == CARD_SCHEMA
    assert ModelCard.from_json(raw) == card


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"schema": "other/v9"}).encode(), "schema is 'other/v9'"),
        (json.dumps({"schema": CARD_SCHEMA, "model": "x"}).encode(), "missing or has a bad field"),
    ],
)
def test_bad_cards_raise_config_errors_that_say_why(raw: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelCard.from_json(raw)
