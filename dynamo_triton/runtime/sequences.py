"""Sequence (stateful model) requests: which sequence a request belongs to, and its START/END flags.

Triton's sequence batcher keeps a sequence's state on the model instance that saw
its START; every later request of that sequence must reach the same worker. The
frontend pipeline extracts a :class:`SequenceStep` from each request once and the
routing service pins the sequence to one instance (see ``docs/sequences.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamo_triton.errors import InvalidRequestError

__all__ = ["SequenceStep", "sequence_step"]


@dataclass(frozen=True)
class SequenceStep:
    """One request's place in a sequence.

    :param sequence_id: Triton's correlation id, an unsigned integer or a string (never 0 / empty).
    :param start: the request carries ``sequence_start`` (it begins the sequence).
    :param end: the request carries ``sequence_end`` (it ends the sequence).
    """

    sequence_id: int | str
    start: bool = False
    end: bool = False


def _flag(parameters: Any, name: str) -> bool:
    if name not in parameters:
        return False
    parameter = parameters[name]
    kind = parameter.WhichOneof("parameter_choice")
    if kind != "bool_param":
        raise InvalidRequestError(f"parameter '{name}' must be a bool, got {kind or 'no value'}")
    return bool(parameter.bool_param)


def sequence_step(request: Any) -> SequenceStep | None:
    """The sequence a parsed ``ModelInferRequest`` belongs to, or None when it names none.

    ``sequence_id`` may be an int64, uint64 or string parameter, as in Triton; 0 and ``""``
    mean "no sequence". Raises InvalidRequestError for a parameter of the wrong type.
    """
    parameters = request.parameters
    if "sequence_id" not in parameters:
        return None
    parameter = parameters["sequence_id"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind in ("int64_param", "uint64_param"):
        value: int | str = int(getattr(parameter, kind))
        if value < 0:
            raise InvalidRequestError(f"sequence_id must not be negative, got {value}")
    elif kind == "string_param":
        value = parameter.string_param
    else:
        raise InvalidRequestError(f"parameter 'sequence_id' must be an integer or a string, got {kind or 'no value'}")
    if value in (0, ""):
        return None
    return SequenceStep(value, start=_flag(parameters, "sequence_start"), end=_flag(parameters, "sequence_end"))
