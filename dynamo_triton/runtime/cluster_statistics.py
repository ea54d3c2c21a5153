"""Model statistics over the whole cluster: monotonic ModelStatistics and per-model Prometheus metrics.

:class:`StatisticsService` is the frontend's routing service with a ``statistics``
that remembers what departed workers served (see :class:`StatisticsLedger`).
:class:`ModelStatisticsCollector` turns the latest totals into ``dyntriton_model_*``
counters on the frontend's ``/metrics`` (queue and compute time per model, summed
over workers, as Triton's ``nv_inference_*`` are per server); :func:`refresh_statistics`
keeps them fresh from a background task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import DyntritonError
from dynamo_triton.frontend import ModelRepository
from dynamo_triton.runtime.discovery import Instance
from dynamo_triton.runtime.service import STATISTICS_ENDPOINT, RoutingService
from dynamo_triton.runtime.statistics import StatisticsLedger

__all__ = ["ModelStatisticsCollector", "StatisticsService", "refresh_statistics"]

log = logging.getLogger(__name__)

#: Seconds between two refreshes of the frontend's per-model metrics.
REFRESH_INTERVAL = 5.0


class StatisticsService(RoutingService):
    """A :class:`RoutingService` whose ``statistics`` never decrease when a worker leaves."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ledger = StatisticsLedger()
        #: Model control over the cluster, set by ``start_frontend`` (None: not offered).
        self.repository: ModelRepository | None = None

    async def statistics(self, name: str = "") -> service_pb2.ModelStatisticsResponse:
        """Statistics of ``name`` (every served model when empty), summed over live and departed instances.

        :raises DyntritonError: NOT_FOUND for a model nobody serves or served.
        """
        if name:
            self.model(name)
        instances: dict[str, Instance] = {}
        for inst in self._table.all_instances():
            if not name or inst.card.model == name:
                instances.setdefault(inst.instance_id, inst)
        reports = await asyncio.gather(*(self._report(inst, name) for inst in instances.values()))
        for inst, report in zip(instances.values(), reports, strict=True):
            if report is not None:
                self.ledger.record(inst.instance_id, report)
        served = {model.name for model in self.models()}
        return self.ledger.total(keep={name} if name else served)

    async def _report(self, inst: Instance, name: str) -> service_pb2.ModelStatisticsResponse | None:
        try:
            call = self._client(inst.card.transport).call(inst.address, STATISTICS_ENDPOINT, name.encode(), timeout=5.0)
            chunks = [bytes(chunk) async for chunk in call]
        except DyntritonError as exc:
            log.warning("statistics from %s failed (its last report still counts): %s", inst.address, exc)
            return None
        return service_pb2.ModelStatisticsResponse.FromString(b"".join(chunks))


_DURATIONS = (
    ("queue", "queue", "waiting in the queue"),
    ("compute_input", "compute_input", "copying inputs"),
    ("compute_infer", "compute_infer", "running the model"),
    ("compute_output", "compute_output", "copying outputs"),
)


class ModelStatisticsCollector(Collector):
    """``dyntriton_model_*`` counters from the latest cluster totals (set with :meth:`update`)."""

    def __init__(self) -> None:
        self._latest = service_pb2.ModelStatisticsResponse()

    def update(self, totals: service_pb2.ModelStatisticsResponse) -> None:
        """Expose ``totals`` (a merged, monotonic ModelStatisticsResponse) from now on."""
        self._latest = totals

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        success = CounterMetricFamily(
            "dyntriton_model_request_success", "Successful inference requests, summed over workers", labels=labels
        )
        failure = CounterMetricFamily(
            "dyntriton_model_request_failure",
            "Failed inference requests (in the backend), summed over workers",
            labels=labels,
        )
        inferences = CounterMetricFamily(
            "dyntriton_model_inference",
            "Inferences performed (a batch of N counts N), summed over workers",
            labels=labels,
        )
        executions = CounterMetricFamily(
            "dyntriton_model_execution", "Model executions (batches), summed over workers", labels=labels
        )
        durations = {
            field: CounterMetricFamily(
                f"dyntriton_model_{metric}_duration_us",
                f"Microseconds spent {what}, summed over requests and workers (Triton's nv_inference_{metric}"
                "_duration_us, cluster-wide)",
                labels=labels,
            )
            for field, metric, what in _DURATIONS
        }
        for stats in self._latest.model_stats:
            key = [stats.name, stats.version]
            success.add_metric(key, stats.inference_stats.success.count)
            failure.add_metric(key, stats.inference_stats.fail.count)
            inferences.add_metric(key, stats.inference_count)
            executions.add_metric(key, stats.execution_count)
            for field, family in durations.items():
                family.add_metric(key, getattr(stats.inference_stats, field).ns / 1000.0)
        yield from (success, failure, inferences, executions, *durations.values())
        yield from self._triton_families()

    def _triton_families(self) -> Iterator[Metric]:
        """Triton's own ``nv_inference_*`` counters (names, help and ``model``/``version`` labels of
        Triton 2.51), summed over the workers, so that a Triton dashboard pointed at the frontend works.

        ``nv_inference_request_failure`` has no ``reason`` label: ModelStatistics counts failures
        without their reason, and a made-up one would mislead. The families are typed ``untyped``:
        prometheus_client writes a counter's samples as ``<name>_total``, and Triton's have no suffix
        (``rate()`` and ``increase()`` work on them all the same).
        """
        labels = ["model", "version"]
        families = [
            (
                "nv_inference_request_success",
                "Number of successful inference requests, all batch sizes",
                lambda s: s.inference_stats.success.count,
            ),
            (
                "nv_inference_request_failure",
                "Number of failed inference requests, all batch sizes",
                lambda s: s.inference_stats.fail.count,
            ),
            (
                "nv_inference_count",
                "Number of inferences performed (does not include cached requests)",
                lambda s: s.inference_count,
            ),
            (
                "nv_inference_exec_count",
                "Number of model executions performed (does not include cached requests)",
                lambda s: s.execution_count,
            ),
            (
                "nv_inference_request_duration_us",
                "Cumulative inference request duration in microseconds (includes cached requests)",
                lambda s: s.inference_stats.success.ns // 1000,
            ),
            (
                "nv_inference_queue_duration_us",
                "Cumulative inference queuing duration in microseconds (includes cached requests)",
                lambda s: s.inference_stats.queue.ns // 1000,
            ),
            (
                "nv_inference_compute_input_duration_us",
                "Cumulative compute input duration in microseconds (does not include cached requests)",
                lambda s: s.inference_stats.compute_input.ns // 1000,
            ),
            (
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute inference duration in microseconds (does not include cached requests)",
                lambda s: s.inference_stats.compute_infer.ns // 1000,
            ),
            (
                "nv_inference_compute_output_duration_us",
                "Cumulative inference compute output duration in microseconds (does not include cached requests)",
                lambda s: s.inference_stats.compute_output.ns // 1000,
            ),
        ]
        for name, help_text, value in families:
            family = Metric(name, help_text, "unknown")  # see the docstring: Triton's names have no _total
            for stats in self._latest.model_stats:
                family.add_sample(name, dict(zip(labels, (stats.name, stats.version), strict=True)), value(stats))
            yield family


async def refresh_statistics(
    service: RoutingService, collector: ModelStatisticsCollector, interval: float = REFRESH_INTERVAL
) -> None:
    """Every ``interval`` seconds, fetch the cluster's statistics into ``collector`` (until cancelled)."""
    while True:
        if service.models():
            try:
                collector.update(await service.statistics())
            except DyntritonError as exc:
                log.debug("statistics refresh failed: %s", exc)
        await asyncio.sleep(interval)
