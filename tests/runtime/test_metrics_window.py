"""Load over the last minute from a process's own Prometheus counters (metrics_window.py)."""

from __future__ import annotations

import math

import pytest

from dynamo_triton.runtime.metrics_window import WORKER_FAMILIES, MetricsWindow, quantile
from dynamo_triton.runtime.worker_metrics import WorkerMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def observe(metrics: WorkerMetrics, model: str, seconds: float, count: int, *, failed: int = 0) -> None:
    """``count`` finished requests of ``seconds`` each, ``failed`` of them with an error."""
    for index in range(count):
        metrics.requests.labels(model).inc()
        metrics.latency.labels(model).observe(seconds)
        if index < failed:
            metrics.failures.labels(model, "INTERNAL").inc()


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    buckets = {0.001: 0.0, 0.0025: 50.0, 0.005: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.0025)
    assert quantile(0.99, buckets) == pytest.approx(0.0025 + 0.0025 * 49 / 50)
    assert quantile(0.5, {0.001: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


def test_a_rank_in_the_unbounded_bucket_reads_as_the_largest_finite_bound() -> None:
    assert quantile(0.99, {0.1: 10.0, 1.0: 20.0, math.inf: 100.0}) == 1.0


def test_a_young_process_is_summarised_since_it_started() -> None:
    metrics, clock = WorkerMetrics(), Clock()
    window = MetricsWindow(metrics.registry, WORKER_FAMILIES, clock=clock)
    observe(metrics, "identity", 0.002, 30, failed=3)
    clock.now += 10
    load = window.summary()["identity"]
    assert (load.requests, load.errors, load.requests_total, load.failures_total) == (30, 3, 30, 3)
    assert load.window_seconds == pytest.approx(10)
    assert load.requests_per_second == pytest.approx(3.0)
    assert 1.0 < load.p50_ms < 2.5 and 1.0 < load.p99_ms <= 2.5  # the (1 ms, 2.5 ms] bucket


def test_only_the_last_minute_counts_in_the_window_but_totals_keep_everything() -> None:
    metrics, clock = WorkerMetrics(), Clock()
    window = MetricsWindow(metrics.registry, WORKER_FAMILIES, clock=clock)
    observe(metrics, "identity", 4.0, 100, failed=100)  # slow failures, long ago
    for _ in range(90):  # sampled every second for 90 s
        clock.now += 1
        window.sample()
    observe(metrics, "identity", 0.0003, 60)
    load = window.summary()["identity"]
    assert load.requests == 60 and load.errors == 0
    assert load.requests_total == 160 and load.failures_total == 100
    assert load.window_seconds == pytest.approx(60)
    assert load.requests_per_second == pytest.approx(1.0)
    assert load.p99_ms is not None and load.p99_ms <= 0.5  # the 4 s requests are out of the window


def test_in_flight_is_read_now_and_models_are_apart() -> None:
    metrics, clock = WorkerMetrics(), Clock()
    window = MetricsWindow(metrics.registry, WORKER_FAMILIES, clock=clock)
    with metrics.track("a"), metrics.track("a"):
        observe(metrics, "b", 0.01, 5)
        clock.now += 1
        loads = window.summary()
    assert loads["a"].in_flight == 2 and loads["a"].requests == 2
    assert loads["a"].p50_ms is None  # none finished yet
    assert loads["b"].in_flight == 0 and loads["b"].requests == 5


def test_the_ring_of_readings_stays_bounded() -> None:
    metrics, clock = WorkerMetrics(), Clock()
    window = MetricsWindow(metrics.registry, WORKER_FAMILIES, clock=clock)
    for _ in range(1000):
        clock.now += 1
        window.sample()
    assert len(window._readings) <= 62
