"""Admission control: requests in flight per worker are bounded, the rest wait in deadline order or are shed at once.

Why: past capacity, a frontend that forwards everything builds queues of work whose callers
already gave up; the model then works at full speed for nobody, and the backlog keeps failing
new requests long after the spike (a metastable failure). The frontend sees every worker's
load and every caller's deadline, so it decides here, before a byte is sent:

- **Slots.** An instance (one worker serving one model) runs at most :func:`slot_limit` requests
  at once: the model's execution instances times its largest batch when it batches dynamically,
  plus one request per execution instance waiting in Triton, so a worker never idles between two
  requests and Triton's own queue stays one deep. ``--max-inflight`` sets it instead.
- **Queue.** A request that finds every slot taken waits in its model's queue, served by
  priority level (Triton's ``priority`` parameter, lower first, 0 = the model's default level),
  then earliest deadline, then arrival. A freed slot goes to the head of the queue.
- **Shedding, at once.** A request is refused with ``RESOURCE_EXHAUSTED`` (HTTP 503 with
  ``Retry-After``) without waiting when the queue is full (Triton's ``max_queue_size`` times the
  instances, else ``--max-queue``), and, for a request with a deadline, when the deadline cannot be
  met (the estimated wait plus one service time ends past it) or when the model is *overloaded*
  and the wait is more than one service time. Overloaded means the queue has not been empty for
  ``overload_interval`` (the CoDel idea: a standing queue, not a burst); then the queue is kept
  short, so the servers stay busy, nobody waits for work that will be late, and the moment the
  spike ends the queue is gone. A request without a deadline is never shed on an estimate: its
  caller waits as long as it takes (closed-loop load generators such as perf_analyzer and h2load
  keep a standing queue by design and must not see errors for it).
- **Expiry.** A waiting request whose deadline passes is answered ``DEADLINE_EXCEEDED`` then,
  never sent; one whose turn comes less than a service time before its deadline is refused then
  (``RESOURCE_EXHAUSTED``), not run for nobody. A waiter whose caller cancels leaves the queue.

The estimates come from the service time measured per model (the median of the last answers' times
from dispatch to the end of the answer): the queue drains at ``slots / service time``.
Nothing is shed on an estimate before the first answers gave one.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dynamo_triton.errors import DeadlineExceededError, OverloadedError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from tritonclient.grpc import model_config_pb2

    from dynamo_triton.runtime.discovery import Instance
    from dynamo_triton.runtime.routing import Policy

__all__ = ["UNBOUNDED_SLOTS", "Admission", "AdmissionSettings", "QueueCollector", "queue_policy", "slot_limit"]

#: Service times kept per model; the estimate is their median (one slow request, such as the first
#: after a model loads, must not make the frontend refuse everything for a while, as a mean would).
_SAMPLES = 32


@dataclass(frozen=True)
class AdmissionSettings:
    """The operator's knobs (``frontend``/``serve`` options).

    :param max_inflight: requests in flight per instance; 0 = from the model's config (:func:`slot_limit`).
    :param max_queue: waiting requests per model when the model's config sets no ``max_queue_size``.
    :param overload_interval: seconds the queue must stay non-empty before the model counts as overloaded.
    :param enabled: False forwards every request at once (the behaviour before admission control).
    """

    max_inflight: int = 0
    max_queue: int = 10_000
    overload_interval: float = 0.5
    enabled: bool = True


#: Slots of a model whose concurrency its config does not tell: decoupled models (one instance may
#: serve many streams at once, e.g. an LLM batching continuously) and ensembles (no instances of their own).
UNBOUNDED_SLOTS = 1 << 20


def slot_limit(config: model_config_pb2.ModelConfig) -> int:
    """Requests in flight one worker takes for a model: executions at once, plus one waiting per execution.

    Decoupled models and ensembles are not bounded by their config (:data:`UNBOUNDED_SLOTS`): set
    ``--max-inflight`` for them. A queue policy's ``max_queue_size`` caps the slots (Triton's own
    queue must hold every request sent before any starts).
    """
    if config.model_transaction_policy.decoupled or config.platform == "ensemble" or not config.instance_group:
        return UNBOUNDED_SLOTS
    parallel = sum(max(group.count, 1) for group in config.instance_group)
    batch = max(config.max_batch_size, 1) if config.HasField("dynamic_batching") else 1
    limit = parallel * batch + parallel
    max_queue = config.dynamic_batching.default_queue_policy.max_queue_size
    # Requests sent at once may all sit in Triton's queue for a moment before one executes: never
    # send more than its max_queue_size, or Triton refuses one of them itself.
    return min(limit, max_queue) if max_queue else limit


def queue_policy(config: model_config_pb2.ModelConfig) -> tuple[int, float | None, int, bool]:
    """Triton's default queue policy of a model.

    :return: ``(max_queue_size, default timeout in s or None, default priority level,
        allow_timeout_override)``; ``max_queue_size`` 0 means unbounded, as in Triton. Without
        dynamic batching there is no policy: ``(0, None, 0, True)``.
    """
    if not config.HasField("dynamic_batching"):
        return 0, None, 0, True
    batching = config.dynamic_batching
    policy = batching.default_queue_policy
    timeout = policy.default_timeout_microseconds / 1e6 if policy.default_timeout_microseconds else None
    return policy.max_queue_size, timeout, batching.default_priority_level, policy.allow_timeout_override


@dataclass(order=True)
class _Waiter:
    priority: int
    deadline: float
    order: int
    future: asyncio.Future[Instance] = field(compare=False)


@dataclass
class _ModelState:
    queue: list[_Waiter] = field(default_factory=list)
    waiting: int = 0  # queue entries whose future is still pending
    samples: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_SAMPLES))
    _median: float | None = None

    @property
    def service_time(self) -> float | None:
        """The median of the recent service times, or None before the first answer."""
        if self._median is None and self.samples:
            self._median = statistics.median(self.samples)
        return self._median

    def measured(self, elapsed: float) -> None:
        self.samples.append(elapsed)
        self._median = None

    busy_since: float | None = None  # when the queue last became non-empty; None while it is empty


class Admission:
    """Hands out slots on instances; see the module docstring for the rules.

    :param settings: the operator's knobs.
    :param unresponsive: tells whether an instance's worker stopped answering (it gets no new requests).
    :param clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        settings: AdmissionSettings | None = None,
        *,
        unresponsive: Callable[[Instance], bool] = lambda _instance: False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings or AdmissionSettings()
        self._unresponsive, self._clock = unresponsive, clock
        self._models: dict[str, _ModelState] = {}
        self._limits: dict[int, int] = {}  # id(config) -> slots
        self._order = itertools.count()

    def limit(self, instance: Instance) -> int:
        """Slots of ``instance`` (its model's config, or the operator's ``max_inflight``)."""
        if self.settings.max_inflight:
            return self.settings.max_inflight
        key = id(instance.config)
        limit = self._limits.get(key)
        if limit is None:
            if len(self._limits) > 4096:  # configs of instances long gone
                self._limits.clear()
            limit = self._limits[key] = slot_limit(instance.config)
        return limit

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = _ModelState()
        return state

    def _free(self, candidates: Sequence[Instance]) -> list[Instance]:
        return [inst for inst in candidates if inst.outstanding < self.limit(inst) and not self._unresponsive(inst)]

    async def admit(
        self,
        model: str,
        candidates: Sequence[Instance],
        policy: Policy,
        *,
        deadline: float | None = None,
        priority: int = 0,
        max_queue: int = 0,
    ) -> Instance:
        """A slot on one of ``candidates`` (never empty), counted in ``outstanding``; give it back: :meth:`release`.

        :param deadline: the caller's deadline on :attr:`clock`'s scale, or None.
        :param priority: the request's priority level (lower runs first).
        :param max_queue: the model's own queue bound for the whole cluster (Triton's ``max_queue_size``
            times its workers; 0: none), refused as Triton does (UNAVAILABLE, "Exceeds maximum queue size").
        :raises OverloadedError: shed at once (see the module docstring).
        :raises DeadlineExceededError: the deadline passed while the request waited.
        """
        if not self.settings.enabled:
            instance = policy.pick(model, candidates)
            instance.outstanding += 1
            return instance
        state = self._state(model)
        free = self._free(candidates)
        if free and not state.waiting:
            instance = policy.pick(model, free)
            instance.outstanding += 1
            return instance
        now = self._clock()
        self._shed_if_hopeless(model, state, candidates, now, deadline, max_queue)
        waiter = _Waiter(priority, math.inf if deadline is None else deadline, next(self._order), _new_future())
        heapq.heappush(state.queue, waiter)
        state.waiting += 1
        if state.busy_since is None:
            state.busy_since = now
        if free:  # slots are free but others wait: the head of the queue goes first
            self._dispatch(model, state, free, policy)
        try:
            try:
                if deadline is None:
                    return await waiter.future
                async with asyncio.timeout_at(_loop_time(deadline, now)):
                    return await waiter.future
            except BaseException:
                self._abandon(model, state, waiter, candidates, policy)
                raise
        except TimeoutError:
            raise DeadlineExceededError(
                f"deadline exceeded while model '{model}' was busy (the request waited its turn and was not sent)"
            ) from None

    def _abandon(
        self, model: str, state: _ModelState, waiter: _Waiter, candidates: Sequence[Instance], policy: Policy
    ) -> None:
        """The waiter's caller left (deadline, cancel): leave the queue, or give back a slot handed at that moment."""
        future = waiter.future
        if future.done() and not future.cancelled():
            self.release(model, future.result(), candidates, policy, None)
            return
        future.cancel()
        state.waiting -= 1
        self._note_empty(state)

    def _shed_if_hopeless(
        self,
        model: str,
        state: _ModelState,
        candidates: Sequence[Instance],
        now: float,
        deadline: float | None,
        model_queue: int,
    ) -> None:
        ahead = state.waiting
        if model_queue and ahead >= model_queue:
            # Triton's own words and status for its queue policy's bound.
            raise OverloadedError(
                "Exceeds maximum queue size",
                retry_after=self._wait(state, candidates, ahead) or 1.0,
                status="UNAVAILABLE",
                hint=f"model '{model}' lets {model_queue} requests wait (max_queue_size times its workers)",
            )
        if ahead >= self.settings.max_queue:
            raise OverloadedError(
                f"model '{model}' is at capacity: {ahead} requests wait (--max-queue {self.settings.max_queue})",
                retry_after=self._wait(state, candidates, ahead) or 1.0,
            )
        service = state.service_time
        if service is None or deadline is None:
            return  # no estimate yet, or a caller who waits as long as it takes
        wait = self._wait(state, candidates, ahead + 1)
        if now + wait + service > deadline:
            raise OverloadedError(
                f"model '{model}' is at capacity: the request's deadline ends in "
                f"{max(deadline - now, 0) * 1000:.0f} ms, before its turn (about {(wait + service) * 1000:.0f} ms)",
                retry_after=wait,
            )
        overloaded = state.busy_since is not None and now - state.busy_since >= self.settings.overload_interval
        if overloaded and wait > service:
            raise OverloadedError(
                f"model '{model}' is overloaded: every worker is busy and requests have been waiting for "
                f"{(now - (state.busy_since or now)) * 1000:.0f} ms",
                retry_after=wait,
            )

    def _wait(self, state: _ModelState, candidates: Sequence[Instance], position: int) -> float:
        """Estimated seconds until the ``position``-th waiter gets a slot."""
        if state.service_time is None:
            return 0.0
        slots = sum(self.limit(inst) for inst in candidates) or 1
        return position * state.service_time / slots

    def release(
        self,
        model: str,
        instance: Instance,
        candidates: Sequence[Instance],
        policy: Policy,
        elapsed: float | None,
    ) -> None:
        """Give back a slot :meth:`admit` took; ``elapsed`` (seconds in flight; None: failed) feeds the estimate.

        :param candidates: the model's live instances now (a waiter may go to any free one).
        """
        instance.outstanding -= 1
        state = self._models.get(model)
        if state is None:
            return
        if elapsed is not None:
            state.measured(elapsed)
        if state.waiting:
            self._dispatch(model, state, self._free(candidates), policy)

    def kick(self, model: str, candidates: Sequence[Instance], policy: Policy) -> None:
        """Hand free slots to waiters (after instances joined the table)."""
        state = self._models.get(model)
        if state is not None and state.waiting:
            self._dispatch(model, state, self._free(candidates), policy)

    def _dispatch(self, model: str, state: _ModelState, free: list[Instance], policy: Policy) -> None:
        service = state.service_time
        now = self._clock() if service is not None else 0.0
        while free and state.queue:
            waiter = heapq.heappop(state.queue)
            if waiter.future.done():
                continue
            if service is not None and waiter.deadline < now + service:
                # Its turn came too late to finish in time: refuse it now rather than run it for nobody.
                state.waiting -= 1
                waiter.future.set_exception(
                    OverloadedError(
                        f"model '{model}' is at capacity: the request's deadline ends in "
                        f"{max(waiter.deadline - now, 0) * 1000:.0f} ms, before it could run "
                        f"(about {service * 1000:.0f} ms)",
                        retry_after=service,
                    )
                )
                continue
            instance = policy.pick(model, free)
            instance.outstanding += 1
            state.waiting -= 1
            waiter.future.set_result(instance)
            if instance.outstanding >= self.limit(instance):
                free = [inst for inst in free if inst is not instance]
        self._note_empty(state)

    def _note_empty(self, state: _ModelState) -> None:
        if not state.waiting:
            state.queue.clear()
            state.busy_since = None

    def waiting(self, model: str) -> int:
        """Requests of ``model`` waiting for a slot now."""
        state = self._models.get(model)
        return 0 if state is None else state.waiting

    def queues(self) -> dict[str, int]:
        """Waiting requests per model that ever had to wait."""
        return {model: state.waiting for model, state in self._models.items()}


class QueueCollector:
    """``dyntriton_frontend_queued_requests{model}``: requests waiting for a slot, read at scrape time."""

    def __init__(self, admission: Admission):
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "dyntriton_frontend_queued_requests",
            "Requests waiting in the frontend for a worker's slot (admission control)",
            labels=["model"],
        )
        for model, waiting in sorted(self._admission.queues().items()):
            family.add_metric([model], waiting)
        yield family


def _new_future() -> asyncio.Future[Instance]:
    return asyncio.get_running_loop().create_future()


def _loop_time(deadline: float, now: float) -> float:
    """``deadline`` (on the admission clock) on the event loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - now)
