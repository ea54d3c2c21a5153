"""Load over the last minute, per model, from a process's own Prometheus counters.

Prometheus counters and histograms are cumulative since the process started; "requests per
second and p99 over the last minute" is a difference between two readings. A
:class:`MetricsWindow` reads the four request families of a registry (requests, failures by
status, a latency histogram, requests in flight) every ``interval`` seconds into a short ring,
and :meth:`MetricsWindow.summary` subtracts the reading closest to ``span`` seconds ago from
one taken now. Nothing is added to the request path: the counters are there already.

p50 and p99 are estimated from the histogram's buckets the way Prometheus's
``histogram_quantile`` does (linear within the bucket the rank falls in; a rank in the last,
unbounded bucket reads as the largest finite bound), so they are as fine as the buckets.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

__all__ = [
    "FRONTEND_FAMILIES",
    "WORKER_FAMILIES",
    "Families",
    "MetricsWindow",
    "ModelLoad",
    "quantile",
]

#: Seconds of history a summary covers ("the last minute").
SPAN = 60.0


@dataclass(frozen=True)
class Families:
    """Names of the request metric families a window reads (as registered, without ``_total``)."""

    requests: str
    failures: str
    latency: str
    in_flight: str


WORKER_FAMILIES = Families(
    "dyntriton_worker_requests",
    "dyntriton_worker_request_failures",
    "dyntriton_worker_request_duration_seconds",
    "dyntriton_worker_inflight_requests",
)

FRONTEND_FAMILIES = Families(
    "dyntriton_frontend_requests",
    "dyntriton_frontend_request_failures",
    "dyntriton_frontend_request_duration_seconds",
    "dyntriton_frontend_inflight_requests",
)


@dataclass
class _Reading:
    """Cumulative values per model at one time (other labels, e.g. protocol, summed)."""

    time: float
    requests: dict[str, float] = field(default_factory=dict)
    failures: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    in_flight: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelLoad:
    """One model's load in one process.

    :param in_flight: requests being served now.
    :param requests_total: requests received since the process started.
    :param failures_total: requests that ended with an error since the process started.
    :param window_seconds: how many seconds the window fields cover (up to 60; less for a young process).
    :param requests: requests finished or started within the window (the counter's increase).
    :param requests_per_second: ``requests / window_seconds``.
    :param errors: requests that ended with an error within the window.
    :param p50_ms: median latency of the requests that finished within the window (None: none did).
    :param p99_ms: 99th percentile latency, the same way.
    """

    in_flight: int
    requests_total: int
    failures_total: int
    window_seconds: float
    requests: int
    requests_per_second: float
    errors: int
    p50_ms: float | None
    p99_ms: float | None


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile from cumulative bucket counts ``{upper bound: count}`` (``+inf`` included).

    None when no observation fell in the buckets.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        if not math.isinf(bound):
            lower = bound
        below = count
    return lower


class MetricsWindow:
    """Readings of ``families`` in ``registry``, and summaries of the last ``span`` seconds from them.

    Call :meth:`sample` every ``interval`` seconds (or run :meth:`run` as a task); the first
    reading is taken at construction, so a process younger than ``span`` is summarised since it started.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        families: Families,
        *,
        span: float = SPAN,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._families, self.span, self.interval, self._clock = families, span, interval, clock
        names = [
            f"{families.requests}_total",
            f"{families.failures}_total",
            f"{families.latency}_bucket",
            families.in_flight,
        ]
        self._source = registry.restricted_registry(names)
        self._readings: deque[_Reading] = deque()
        self.sample()

    def _read(self) -> _Reading:
        reading = _Reading(self._clock())
        fam = self._families
        for metric in self._source.collect():
            for sample in metric.samples:
                model = sample.labels.get("model", "")
                if sample.name == f"{fam.requests}_total":
                    reading.requests[model] = reading.requests.get(model, 0.0) + sample.value
                elif sample.name == f"{fam.failures}_total":
                    reading.failures[model] = reading.failures.get(model, 0.0) + sample.value
                elif sample.name == f"{fam.latency}_bucket":
                    bound = float(sample.labels["le"])
                    per_model = reading.buckets.setdefault(model, {})
                    per_model[bound] = per_model.get(bound, 0.0) + sample.value
                elif sample.name == fam.in_flight:
                    reading.in_flight[model] = reading.in_flight.get(model, 0.0) + sample.value
        return reading

    def sample(self) -> None:
        """Take a reading now; forget those no summary needs any more."""
        reading = self._read()
        self._readings.append(reading)
        horizon = reading.time - self.span
        # Keep the newest reading at or before the horizon: it is the base of a full window.
        while len(self._readings) > 2 and self._readings[1].time <= horizon:
            self._readings.popleft()

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def summary(self) -> dict[str, ModelLoad]:
        """Every model's load: counters now, and their increase over the last ``span`` seconds."""
        now = self._read()
        horizon = now.time - self.span
        base = self._readings[0]
        for reading in self._readings:
            if reading.time > horizon:
                break
            base = reading  # the newest reading at or before the horizon, else the oldest one
        seconds = max(now.time - base.time, 1e-9)
        loads: dict[str, ModelLoad] = {}
        for model in sorted(set(now.requests) | set(now.in_flight)):
            requests = now.requests.get(model, 0.0) - base.requests.get(model, 0.0)
            errors = now.failures.get(model, 0.0) - base.failures.get(model, 0.0)
            before = base.buckets.get(model, {})
            delta = {bound: count - before.get(bound, 0.0) for bound, count in now.buckets.get(model, {}).items()}
            p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
            loads[model] = ModelLoad(
                in_flight=round(now.in_flight.get(model, 0.0)),
                requests_total=round(now.requests.get(model, 0.0)),
                failures_total=round(now.failures.get(model, 0.0)),
                window_seconds=round(seconds, 3),
                requests=round(requests),
                requests_per_second=round(requests / seconds, 3),
                errors=round(errors),
                p50_ms=None if p50 is None else round(p50 * 1000, 3),
                p99_ms=None if p99 is None else round(p99 * 1000, 3),
            )
        return loads
