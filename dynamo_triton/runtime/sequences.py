"""Sequence (stateful model) requests: which sequence a request belongs to, and where it must go.

Triton's sequence batcher keeps a sequence's state on the model instance that saw
its START; every later request of that sequence must reach the same worker. The
frontend pipeline extracts a :class:`SequenceStep` from each request once; the
routing service (``service.py``) then uses the pieces here (see ``docs/sequences.md``):

- :func:`hrw_order` ranks a model's live instances for one sequence by rendezvous
  (highest random weight) hashing, so frontends that see the same instances pick the
  same one without talking to each other;
- :class:`PinTable` remembers, per frontend, the instance each running sequence went
  to (recorded at START), so a worker joining moves no running sequence; a pin ends
  with END or after the model's idle limit, and is bounded in number;
- :func:`is_unknown_sequence` recognises Triton's rejection of a non-START request for
  a sequence it does not hold, which it returns before touching any sequence state;
- :func:`lost_sequence_error` is the UNAVAILABLE answer for a sequence whose worker is gone.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from dynamo_triton.errors import DyntritonError, InvalidRequestError, NoInstanceError
from dynamo_triton.runtime.discovery import Instance

__all__ = [
    "DEFAULT_IDLE_SECONDS",
    "LOST_MEMORY_SECONDS",
    "Pin",
    "PinTable",
    "SequenceStep",
    "hrw_order",
    "idle_seconds",
    "is_unknown_sequence",
    "lost_sequence_error",
    "sequence_step",
]

#: Triton's ``max_sequence_idle_microseconds`` when a config leaves it 0 or unset
#: (``SEQUENCE_IDLE_DEFAULT_MICROSECONDS`` in Triton core: one second).
DEFAULT_IDLE_SECONDS = 1.0

#: How long a frontend keeps answering "lost with its worker" for a sequence (at least).
LOST_MEMORY_SECONDS = 60.0

#: The part of Triton's sequence batcher error for a non-START request of a sequence it
#: does not hold ("inference request for sequence N to model 'm' must specify the START
#: flag on the first request of the sequence"). Triton returns it before recording anything.
_UNKNOWN_SEQUENCE = "must specify the START flag on the first request of the sequence"


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
    value: int | str
    if kind in ("int64_param", "uint64_param"):
        number = int(getattr(parameter, kind))
        if number < 0:
            raise InvalidRequestError(f"sequence_id must not be negative, got {number}")
        value = number
    elif kind == "string_param":
        value = parameter.string_param
    else:
        raise InvalidRequestError(f"parameter 'sequence_id' must be an integer or a string, got {kind or 'no value'}")
    if value in (0, ""):
        return None
    return SequenceStep(value, start=_flag(parameters, "sequence_start"), end=_flag(parameters, "sequence_end"))


def idle_seconds(config: Any) -> float | None:
    """Triton's idle limit for a sequence of this ``ModelConfig``; None when it has no ``sequence_batching``."""
    if not config.HasField("sequence_batching"):
        return None
    micros = config.sequence_batching.max_sequence_idle_microseconds
    return micros / 1e6 if micros else DEFAULT_IDLE_SECONDS


def _sequence_key(model: str, sequence_id: int | str) -> bytes:
    # Integer 7 and string "7" are different sequences to Triton, so the kind is part of the key.
    kind = "i" if isinstance(sequence_id, int) else "s"
    return f"{model}\x00{kind}:{sequence_id}\x00".encode()


def _weight(key: bytes, instance_id: str) -> int:
    return int.from_bytes(blake2b(key + instance_id.encode(), digest_size=8).digest(), "big")


def hrw_order(model: str, sequence_id: int | str, instances: Sequence[Instance]) -> list[Instance]:
    """``instances`` ranked for this sequence, best first (rendezvous hashing).

    Deterministic across processes (a keyed hash of model, sequence id and instance id,
    never Python's salted ``hash``): frontends seeing the same instances rank them alike,
    and an instance joining or leaving changes the first choice of ~1/n sequences only.
    """
    key = _sequence_key(model, sequence_id)
    return sorted(instances, key=lambda inst: (_weight(key, inst.instance_id), inst.instance_id), reverse=True)


def is_unknown_sequence(error: DyntritonError) -> bool:
    """True when ``error`` is Triton refusing a non-START request for a sequence its instance does not hold."""
    return error.status == "INVALID_ARGUMENT" and _UNKNOWN_SEQUENCE in error.message


def lost_sequence_error(model: str, sequence_id: int | str, instance_id: str, address: str) -> NoInstanceError:
    """The UNAVAILABLE error for every request of a sequence whose worker is gone."""
    # Frontends send only the message to clients, so the advice is part of it.
    return NoInstanceError(
        f"sequence {sequence_id!r} of model '{model}' was lost with its worker (instance {instance_id} "
        f"at {address} is gone, and the sequence's state with it); restart the sequence: send its first "
        "request again with sequence_start=true (START)"
    )


@dataclass
class Pin:
    """Where one running sequence lives, as this frontend knows it.

    :param expires: ``time.monotonic()`` after which the pin no longer counts.
    :param lost: the instance is gone: requests of the sequence fail until a START.
    """

    instance_id: str
    address: str
    expires: float
    lost: bool = False


class PinTable:
    """Sequence -> instance pins of one frontend, with idle expiry and a size bound.

    Pins are kept in least-recently-used order; each insert drops expired pins from the
    old end and, past ``capacity``, the least recently used pin. Dropping a live pin is
    safe (the router then looks the sequence up in rendezvous order), so the bound costs
    at most a retry, never a wrong answer. Not thread-safe: the event loop owns it.

    :param capacity: the most pins kept.
    :param clock: seconds, monotonic (tests hand in a fake).
    """

    def __init__(self, capacity: int = 65536, clock: Callable[[], float] = time.monotonic):
        if capacity < 1:
            raise ValueError(f"PinTable capacity must be at least 1, got {capacity}")
        self.capacity, self._clock = capacity, clock
        self._pins: OrderedDict[tuple[str, int | str], Pin] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, model: str, sequence_id: int | str) -> Pin | None:
        """The sequence's pin, or None if it has none or it expired."""
        key = (model, sequence_id)
        pin = self._pins.get(key)
        if pin is None:
            return None
        if pin.expires <= self._clock():
            del self._pins[key]
            return None
        return pin

    def pin(self, model: str, sequence_id: int | str, instance: Instance, idle: float) -> Pin:
        """Pin the sequence to ``instance`` for ``idle`` seconds (replacing any pin it had)."""
        key = (model, sequence_id)
        now = self._clock()
        pin = self._pins[key] = Pin(instance.instance_id, instance.address, now + idle)
        self._pins.move_to_end(key)
        self._trim(now)
        return pin

    def touch(self, model: str, sequence_id: int | str, pin: Pin, idle: float) -> None:
        """The sequence was used now: its pin lives ``idle`` seconds more."""
        pin.expires = self._clock() + idle
        key = (model, sequence_id)
        if self._pins.get(key) is pin:
            self._pins.move_to_end(key)

    def lose(self, model: str, sequence_id: int | str, instance_id: str, address: str, idle: float) -> Pin:
        """Record that the sequence's instance is gone (remembered for ``max(idle, LOST_MEMORY_SECONDS)``)."""
        key = (model, sequence_id)
        now = self._clock()
        pin = self._pins[key] = Pin(instance_id, address, now + max(idle, LOST_MEMORY_SECONDS), lost=True)
        self._pins.move_to_end(key)
        self._trim(now)
        return pin

    def drop(self, model: str, sequence_id: int | str) -> None:
        """Forget the sequence (it ended)."""
        self._pins.pop((model, sequence_id), None)

    def _trim(self, now: float) -> None:
        pins = self._pins
        while pins:
            oldest = next(iter(pins.values()))
            if oldest.expires > now and len(pins) <= self.capacity:
                break
            pins.popitem(last=False)
