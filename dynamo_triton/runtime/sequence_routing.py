"""Sticky routing for sequences: every request of one sequence reaches the instance holding its state.

The contract (``docs/sequences.md``):

- START goes to the first instance in rendezvous order (:func:`hrw_order`) and pins the
  sequence there; if that instance fails before answering, to the next one (pinned instead).
- A later request goes to its pin. A frontend without a pin (another frontend saw the
  START, or the pin expired) tries the instances in rendezvous order, passing over those
  that answer Triton's "must specify the START flag" (which Triton returns without
  touching any state), and pins the one that answers.
- When the pinned instance is gone (its card left the store, or it failed mid-request),
  the sequence is lost: this and every later request of it fail with UNAVAILABLE
  (:func:`lost_sequence_error`) until a START; they are never sent to an instance
  without the sequence's state.
- When the pinned instance is connected but unresponsive (its worker is frozen: the
  transport's heartbeats go unanswered), requests of the sequence fail at once with
  UNAVAILABLE saying so, and the pin stays: the sequence goes on if the worker answers
  again, and is lost if its card leaves. Other unresponsive instances are passed over
  (a START goes to the next one in rendezvous order).
- END, or the model's idle limit, ends the pin.
- Requests of one sequence run one after the other, in the order they reached this
  frontend: each waits for the one before it to finish. Nothing else keeps them in
  order between here and Triton (a stream's requests run concurrently, each hop has
  its own tasks), and Triton refuses a step that overtakes its START. Triton runs a
  sequence's requests one at a time anyway, so this costs no throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator

from dynamo_triton.errors import DeadlineExceededError, DyntritonError, NoInstanceError, PeerUnresponsiveError
from dynamo_triton.runtime.discovery import Instance, ModelTable
from dynamo_triton.runtime.sequences import (
    Pin,
    PinTable,
    SequenceStep,
    hrw_order,
    is_unknown_sequence,
    lost_sequence_error,
)

__all__ = ["Send", "SequenceRouter", "unresponsive_sequence_error"]

log = logging.getLogger(__name__)

#: Sends a payload to one instance and yields its answer chunks (the routing service's transport call).
Send = Callable[[Instance, bytes, "float | None"], AsyncGenerator[bytes, None]]


def _never(instance: Instance) -> bool:
    return False


def unresponsive_sequence_error(model: str, sequence_id: int | str) -> NoInstanceError:
    """The UNAVAILABLE answer while the worker that may hold a sequence does not respond (it may come back)."""
    return NoInstanceError(
        f"the worker holding sequence {sequence_id!r} of model '{model}' is not responding (frozen or overloaded); "
        "retry this request shortly: the sequence goes on if the worker recovers, and is lost if it leaves"
    )


class SequenceRouter:
    """Routes the requests of sequences for one frontend.

    :param table: the live instances.
    :param send: ``send(instance, payload, deadline)`` yields the instance's answer; raises
        DyntritonError (UNAVAILABLE when the instance could not be reached).
    :param pins: the pin table (a fresh one by default).
    :param unresponsive: ``unresponsive(instance)``: connected but silent (default: never).
    """

    def __init__(
        self,
        table: ModelTable,
        send: Send,
        pins: PinTable | None = None,
        *,
        unresponsive: Callable[[Instance], bool] | None = None,
    ):
        self._table, self._send = table, send
        self._unresponsive = unresponsive or _never
        self.pins = pins if pins is not None else PinTable()
        # The last request of each sequence in flight here; a new one waits for it.
        self._tails: dict[tuple[str, int | str], asyncio.Future[None]] = {}

    def _candidates(self, name: str, step: SequenceStep, pin: Pin | None) -> Iterator[Instance]:
        """The pinned instance first (if any), then the rest in rendezvous order, computed only if needed."""
        if pin is not None:
            pinned = self._table.instance(name, pin.instance_id)
            if pinned is not None:
                yield pinned
            others = [inst for inst in self._table.instances(name) if inst.instance_id != pin.instance_id]
        else:
            others = self._table.instances(name)
        yield from hrw_order(name, step.sequence_id, others)

    async def infer(
        self, name: str, payload: bytes, step: SequenceStep, idle: float, deadline: float | None
    ) -> AsyncGenerator[bytes, None]:
        """Send one request of a sequence of model ``name`` (idle limit ``idle`` s); yield the answer.

        Waits for the sequence's previous request through this frontend to finish first.
        Raises NoInstanceError naming the model and sequence when the sequence was lost with
        its worker, or when no instance is live; Triton's own error when no instance holds a
        non-START sequence; DeadlineExceededError when ``deadline`` passes while waiting;
        other errors as the instance raised them.
        """
        key = (name, step.sequence_id)
        previous = self._tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        try:
            if previous is not None and not previous.done():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait({previous}, timeout=remaining)  # never cancels ``previous``
                if not done:
                    raise DeadlineExceededError(
                        f"deadline exceeded while sequence {step.sequence_id!r} of model '{name}' "
                        "waited for its previous request"
                    )
            async with contextlib.aclosing(self._route(name, payload, step, idle, deadline)) as answer:
                async for chunk in answer:
                    yield chunk
        finally:
            mine.set_result(None)
            if self._tails.get(key) is mine:
                del self._tails[key]

    async def _route(
        self, name: str, payload: bytes, step: SequenceStep, idle: float, deadline: float | None
    ) -> AsyncGenerator[bytes, None]:
        pins, sequence_id = self.pins, step.sequence_id
        pin = None if step.start else pins.get(name, sequence_id)
        if pin is not None and pin.lost:
            if step.end:
                pins.drop(name, sequence_id)
            raise lost_sequence_error(name, sequence_id, pin.instance_id, pin.address)
        if pin is not None and self._table.instance(name, pin.instance_id) is None:
            self._lose(name, step, pin.instance_id, pin.address, idle)
            raise lost_sequence_error(name, sequence_id, pin.instance_id, pin.address)

        rejection: DyntritonError | None = None  # Triton's "unknown sequence" from the last instance tried
        unreachable: Instance | None = None  # an instance that failed while we looked for the sequence
        silent = False  # an unresponsive instance was passed over: it may hold the sequence
        tried = 0
        for instance in self._candidates(name, step, pin):
            pinned_here = pin is not None and pin.instance_id == instance.instance_id
            if self._unresponsive(instance):
                if pinned_here:
                    raise unresponsive_sequence_error(name, sequence_id)
                silent = True
                continue
            tried += 1
            if step.start:
                # Pinned before the first await: a next step sent right behind START follows it.
                current = pins.pin(name, sequence_id, instance, idle)
            elif pin is not None and pin.instance_id == instance.instance_id:
                current = pin
                pins.touch(name, sequence_id, pin, idle)
            else:
                current = None
            answered = False
            try:
                async with contextlib.aclosing(self._send(instance, payload, deadline)) as answer:
                    async for chunk in answer:
                        if not answered:
                            answered = True
                            if current is None:
                                current = pins.pin(name, sequence_id, instance, idle)
                        yield chunk
            except DyntritonError as exc:
                if not answered and not step.start and is_unknown_sequence(exc):
                    rejection = exc  # this instance does not hold the sequence; Triton recorded nothing
                    continue
                if exc.status != "UNAVAILABLE":
                    raise
                if isinstance(exc, PeerUnresponsiveError) and not step.start:
                    if current is not None or answered:
                        raise unresponsive_sequence_error(name, sequence_id) from exc  # pinned: wait for it
                    silent = True
                    continue
                if step.start and not answered:
                    pins.drop(name, sequence_id)
                    if tried < 2:
                        log.info(
                            "model %r: START of sequence %r: %s failed before answering (%s); trying the next instance",
                            *(name, sequence_id, instance.address, exc),
                        )
                        continue
                    raise NoInstanceError(
                        f"no live instance of model '{name}' could start sequence {sequence_id!r}: {exc.message}"
                    ) from exc
                if current is None and not answered:
                    unreachable = instance  # it may have held the sequence: look further, then say so
                    continue
                self._lose(name, step, instance.instance_id, instance.address, idle)
                raise lost_sequence_error(name, sequence_id, instance.instance_id, instance.address) from exc
            if step.end:
                pins.drop(name, sequence_id)
            elif current is not None:
                pins.touch(name, sequence_id, current, idle)
            return
        if unreachable is not None:
            self._lose(name, step, unreachable.instance_id, unreachable.address, idle)
            raise lost_sequence_error(name, sequence_id, unreachable.instance_id, unreachable.address)
        if silent and step.start:
            raise NoInstanceError(
                f"no instance of model '{name}' is responding right now (frozen or overloaded workers) to start "
                f"sequence {sequence_id!r}; retry shortly"
            )
        if silent:
            raise unresponsive_sequence_error(name, sequence_id)
        if rejection is not None:
            pins.drop(name, sequence_id)  # no instance holds it: a stale pin would only send the next step astray
            raise rejection
        raise NoInstanceError(
            f"no live instance of model '{name}' could take the request of sequence {sequence_id!r}",
            hint="start a worker for it",
        )

    def _lose(self, name: str, step: SequenceStep, instance_id: str, address: str, idle: float) -> None:
        if step.end:
            self.pins.drop(name, step.sequence_id)
        else:
            self.pins.lose(name, step.sequence_id, instance_id, address, idle)
        log.warning("model %r: sequence %r lost with instance %s at %s", name, step.sequence_id, instance_id, address)
