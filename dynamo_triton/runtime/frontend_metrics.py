"""Prometheus metrics of a frontend process, shared by its protocol frontends (gRPC, HTTP).

One :class:`FrontendMetrics` is made per frontend stack and handed to the routing service;
frontends reach it as ``service.metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dynamo_triton.runtime.worker_metrics import LATENCY_BUCKETS

__all__ = ["FrontendMetrics"]


class FrontendMetrics:
    """Requests, failures by status code, latency and in-flight requests, per model and protocol."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dyntriton_frontend_requests", "Inference requests received", ["model", "protocol"], registry=self.registry
        )
        self.failures = Counter(
            "dyntriton_frontend_request_failures",
            "Inference requests answered with an error",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dyntriton_frontend_request_duration_seconds",
            "Time from request received to last response sent",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dyntriton_frontend_inflight_requests", "Requests being served", ["model"], registry=self.registry
        )
        self.models = Gauge(
            "dyntriton_frontend_models", "Models with at least one live instance", registry=self.registry
        )
