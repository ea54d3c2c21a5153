"""Rich renderings of a :class:`~dynamo_triton.runtime.cluster_status.ClusterStatus`, for ``status`` and ``top``.

Tables are narrow enough for an 80-column terminal: instance ids are cut to 8 characters
(``--json`` has them whole), addresses lose their ``tcp://``, and rich shrinks the address
column first when space runs out.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dynamo_triton.runtime.cluster_status import ClusterStatus, FrontendEntry, ModelEntry, WorkerEntry

__all__ = [
    "SPARK_ASCII",
    "SPARK_BLOCKS",
    "by_namespace",
    "frontends_table",
    "latency",
    "model_heading",
    "namespace_line",
    "rate",
    "render_status",
    "short",
    "sparkline",
    "state_text",
    "system_notes",
    "where",
]

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_ASCII = "_.-=+*#@"

_STATE_STYLE = {"serving": "green", "unresponsive": "bold red", "draining": "yellow"}


def short(instance_id: str) -> str:
    """The first 8 characters of an id: unique enough to tell workers apart on one screen."""
    return instance_id[:8]


def rate(value: float | None) -> str:
    """Requests per second: ``1234``, ``12.3``, ``0.05``; ``-`` when unknown."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}" if value else "0"


def latency(ms: float | None) -> str:
    """``0.42ms``, ``12.3ms``, ``1.25s``; ``-`` when no request finished."""
    if ms is None:
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f}s"
    if ms >= 10:
        return f"{ms:.1f}ms"
    return f"{ms:.2f}ms"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def state_text(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def sparkline(values: Sequence[float], width: int, blocks: str = SPARK_BLOCKS) -> str:
    """The last ``width`` values as bars scaled to their maximum (a flat line when all are 0)."""
    recent = list(values)[-width:]
    top = max(recent, default=0.0)
    if top <= 0:
        return blocks[0] * len(recent)
    last = len(blocks) - 1
    return "".join(blocks[min(last, round(value / top * last))] for value in recent)


def address(worker: WorkerEntry) -> str:
    return worker.address.partition("://")[2] or worker.address


def where(worker: WorkerEntry) -> str:
    """The pid of a local worker, else its host."""
    return str(worker.pid) if worker.local and worker.pid else worker.host


def server_label(worker: WorkerEntry) -> str:
    """``Triton 2.51.0`` (the embedded Triton calls itself triton or dyntriton), else ``NAME VERSION``."""
    name = "Triton" if worker.server_name in {"", "triton", "dyntriton"} else worker.server_name
    return f"{name} {worker.server_version}"


def model_heading(model: ModelEntry, *, brief: bool = False) -> Text:
    """``identity  v1 · python · batch 8 · 1 instance · dynamic batching · Triton 2.51.0``.

    ``brief``: versions, sequence and decoupled flags only (``top``'s heading, which adds the rate).
    """
    text = Text(model.name, style="bold cyan")
    parts = []
    if model.versions:
        parts.append("v" + ",".join(model.versions))
    config = next((w.config for w in model.workers if w.config is not None), None)
    if config is not None and not brief:
        if config.backend:
            parts.append(config.backend)
        parts.append(f"batch {config.max_batch_size}")
        parts.append(f"{config.instance_count} instance{'s' if config.instance_count != 1 else ''}")
        if config.dynamic_batching:
            parts.append("dynamic batching")
    if config is not None and config.sequence:
        parts.append("sequence")
    if config is not None and config.decoupled:
        parts.append("decoupled")
    if not brief:
        parts.extend(sorted({server_label(w) for w in model.workers if w.server_version}))
    if parts:
        text.append("  " + " · ".join(parts), style="dim")
    return text


def _worker_table(model: ModelEntry) -> Table:
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("WORKER", no_wrap=True, min_width=8)
    table.add_column("ADDRESS", no_wrap=True, overflow="ellipsis", max_width=21)
    table.add_column("PID/HOST", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("STATE", no_wrap=True, min_width=12)
    table.add_column("INFL", justify="right", no_wrap=True, min_width=4)
    table.add_column("REQ/S", justify="right", no_wrap=True, min_width=5)
    table.add_column("P50", justify="right", no_wrap=True, min_width=6)
    table.add_column("P99", justify="right", no_wrap=True, min_width=6)
    table.add_column("ERR", justify="right", no_wrap=True, min_width=3)
    for worker in model.workers:
        load = worker.load
        table.add_row(
            short(worker.instance_id),
            address(worker),
            where(worker),
            state_text(worker.state),
            count(load["in_flight"]) if load else "-",
            rate(load["requests_per_second"]) if load else "-",
            latency(load["p50_ms"]) if load else "-",
            latency(load["p99_ms"]) if load else "-",
            count(load["errors"]) if load else "-",
        )
    return table


def system_notes(workers: Sequence[WorkerEntry]) -> list[Text]:
    """One line per worker whose system port did not give its load, saying why, and per worker a frontend
    finds unresponsive."""
    notes = []
    for worker in workers:
        if worker.system.status != "ok":
            url = f"{worker.system.url} " if worker.system.url else ""
            notes.append(Text(f"  {short(worker.instance_id)}: {url}{worker.system.error}", style="yellow"))
        if worker.unresponsive_to:
            ids = ", ".join(short(f) for f in worker.unresponsive_to)
            notes.append(Text(f"  {short(worker.instance_id)}: unresponsive to frontend {ids}", style="red"))
    return notes


def frontend_totals(frontend: FrontendEntry) -> tuple[float, int, int, float | None, float | None]:
    """req/s, in flight and errors summed over models; the worst model's p50 and p99."""
    loads = list(frontend.models.values())
    p50s = [load["p50_ms"] for load in loads if load.get("p50_ms") is not None]
    p99s = [load["p99_ms"] for load in loads if load.get("p99_ms") is not None]
    return (
        sum(float(load.get("requests_per_second", 0.0)) for load in loads),
        sum(int(load.get("in_flight", 0)) for load in loads),
        sum(int(load.get("errors", 0)) for load in loads),
        max(p50s, default=None),
        max(p99s, default=None),
    )


def frontends_table(frontends: Sequence[FrontendEntry]) -> Table:
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("FRONTEND", no_wrap=True)
    table.add_column("GRPC", no_wrap=True, overflow="ellipsis", max_width=21)
    table.add_column("HTTP", no_wrap=True, overflow="ellipsis", max_width=21)
    table.add_column("PID/HOST", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("INFL", justify="right", no_wrap=True, min_width=4)
    table.add_column("REQ/S", justify="right", no_wrap=True, min_width=5)
    table.add_column("P99", justify="right", no_wrap=True, min_width=6)
    table.add_column("ERR", justify="right", no_wrap=True, min_width=3)
    for frontend in frontends:
        per_second, in_flight, errors, _, p99 = frontend_totals(frontend)
        stale = Text(" (stale)", style="red") if frontend.stale else ""
        table.add_row(
            Text(short(frontend.frontend_id)) + stale,
            frontend.grpc,
            frontend.http or "-",
            str(frontend.pid) if frontend.local else frontend.host,
            str(in_flight),
            rate(per_second),
            latency(p99),
            str(errors),
        )
    return table


def namespace_line(namespace: str) -> Text:
    """The line that starts a namespace's part of the screen."""
    return Text(f"namespace {namespace}", style="bold magenta")


def by_namespace(status: ClusterStatus) -> list[tuple[str, list[ModelEntry], list[WorkerEntry], list[FrontendEntry]]]:
    """Per namespace (sorted), its models, its workers serving no model and its frontends; empty ones left out."""
    parts = []
    for namespace in status.namespaces:
        models = [model for model in status.models if model.namespace == namespace]
        idle = [worker for worker in status.workers_without_models if worker.namespace == namespace]
        frontends = [frontend for frontend in status.frontends if frontend.namespace == namespace]
        if models or idle or frontends:
            parts.append((namespace, models, idle, frontends))
    return parts


def render_status(status: ClusterStatus) -> RenderableType:
    """The whole ``dyntriton status`` screen, namespace by namespace."""
    parts: list[RenderableType] = []
    for namespace, models, idle, frontends in by_namespace(status):
        parts.append(namespace_line(namespace))
        for model in models:
            parts.append(model_heading(model))
            parts.append(_worker_table(model))
            parts.extend(system_notes(model.workers))
        if idle:
            parts.append(Text("workers serving no model", style="bold"))
            parts.append(_worker_table(ModelEntry("", [], idle)))
            parts.extend(system_notes(idle))
        parts.append(Text(""))
        if frontends:
            parts.append(Text("frontends", style="bold"))
            parts.append(frontends_table(frontends))
        else:
            parts.append(Text("no frontend has published itself (older frontends do not)", style="dim"))
        parts.append(Text(""))
    for warning in status.warnings:
        parts.append(Text(f"warning: {warning}", style="yellow"))
    return Group(*parts)
