"""docs/plugins.md documents every hook (a new hook without docs fails here)."""

from __future__ import annotations

from pathlib import Path

from dynamo_triton import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def test_every_hook_is_documented_with_its_heading() -> None:
    text = DOCS.read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("dyntriton_")]
    assert hooks, "no hooks found"
    missing = [hook for hook in hooks if f"### `{hook}(register)`" not in text]
    assert missing == []


def test_every_operator_knob_is_documented() -> None:
    text = DOCS.read_text()
    for knob in (
        "DYNTRITON_PLUGINS",
        "DYNTRITON_DISABLE_PLUGINS",
        "DYNTRITON_LOAD_PLUGINS",
        "DYNTRITON_STRICT_PLUGINS",
        "DYNTRITON_TRACE_PLUGINS",
    ):
        assert knob in text
