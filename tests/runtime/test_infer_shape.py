"""`dyntriton infer --shape` means what it says, or refuses with what the input's shape is."""

from __future__ import annotations

import click
import pytest

from dynamo_triton.cli.infer_cmd import _resolve_shape


def test_without_shape_any_dimension_is_one() -> None:
    assert _resolve_shape("INPUT0", [-1, -1], ()) == [1, 1]
    assert _resolve_shape("INPUT0", [-1, 16], ()) == [1, 16]


def test_a_shape_with_one_number_per_dimension_is_sent_as_given() -> None:
    assert _resolve_shape("INPUT0", [-1, -1], (1, 5)) == [1, 5]  # the README's `--shape 1 5`
    assert _resolve_shape("INPUT0", [-1], (5,)) == [5]
    assert _resolve_shape("INPUT0", [-1, 16], (3, 16)) == [3, 16]


def test_another_number_of_dimensions_is_refused_not_guessed() -> None:
    with pytest.raises(
        click.BadParameter, match=r"--shape 5 has 1 dimension\(s\), but input 'INPUT0' has 2.*--shape 1 5"
    ):
        _resolve_shape("INPUT0", [-1, -1], (5,))
    with pytest.raises(click.BadParameter, match="has 3 dimension"):
        _resolve_shape("INPUT0", [-1], (1, 2, 3))


def test_a_dimension_the_model_fixes_must_match() -> None:
    with pytest.raises(click.BadParameter, match="dimension 1 of input 'INPUT0' is fixed at 16, got 8"):
        _resolve_shape("INPUT0", [-1, 16], (1, 8))
