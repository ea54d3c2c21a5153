"""Prometheus metrics of a worker, per model, in a registry of its own."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics"]

#: Latency buckets (seconds): sub-millisecond to tens of seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """Request counters, failures by status, latency and in-flight gauges, labelled by model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dyntriton_worker_requests", "Inference requests received", ["model"], registry=self.registry
        )
        self.failures = Counter(
            "dyntriton_worker_request_failures",
            "Inference requests that ended with an error",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dyntriton_worker_request_duration_seconds",
            "Time from request received to last response sent",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dyntriton_worker_inflight_requests", "Requests being processed", ["model"], registry=self.registry
        )
        self._per_model: dict[str, tuple[Any, Any, Any]] = {}
        self.models_loaded = Gauge(
            "dyntriton_worker_models_loaded", "Models loaded and registered", registry=self.registry
        )

    def _children(self, model: str) -> tuple[Any, Any, Any]:
        """``model``'s request counter, in-flight gauge and latency histogram (looked up once per model)."""
        children = self._per_model.get(model)
        if children is None:
            children = (self.requests.labels(model), self.in_flight.labels(model), self.latency.labels(model))
            self._per_model[model] = children
        return children

    def track(self, model: str) -> _Tracked:
        """Count one request for ``model`` around the ``with`` body; failures by status.

        A plain context manager (not a generator): it runs once per request on the worker's hot path.
        """
        return _Tracked(self, model)


class _Tracked:
    """One request counted by :meth:`WorkerMetrics.track`."""

    __slots__ = ("_gauge", "_latency", "_metrics", "_model", "_start")

    def __init__(self, metrics: WorkerMetrics, model: str):
        self._metrics, self._model = metrics, model
        requests, self._gauge, self._latency = metrics._children(model)
        requests.inc()

    def __enter__(self) -> None:
        self._gauge.inc()
        self._start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if kind is not None:
            cancelled = issubclass(kind, GeneratorExit | asyncio.CancelledError)
            status = "CANCELLED" if cancelled else getattr(exc, "status", "INTERNAL")
            self._metrics.failures.labels(self._model, status).inc()
        self._gauge.dec()
        self._latency.observe(time.perf_counter() - self._start)
