"""``dyntriton top``: ``status``, live, redrawn every second until ``q`` or Ctrl-C.

One table per model, the busiest first, its workers sorted by load; REQ/S is the rate since
the previous frame (from the workers' request counters) and TREND its last frames as a
sparkline; P50, P99 and ERR cover the last minute. The screen is drawn by ``rich.live.Live``
on the terminal's alternate screen (whole frames, no clearing, so no flicker) and restored on
exit; keys are read in cbreak mode (no echo, no Enter needed; Ctrl-C still signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dynamo_triton.cli.composition import PanelCommand, uses
from dynamo_triton.cli.options import store_options
from dynamo_triton.cli.status_cmd import chosen_namespace, open_store, timeout_option
from dynamo_triton.cli.status_view import (
    SPARK_ASCII,
    SPARK_BLOCKS,
    by_namespace,
    frontends_table,
    latency,
    model_heading,
    namespace_line,
    rate,
    short,
    sparkline,
    state_text,
    system_notes,
    where,
)
from dynamo_triton.errors import DyntritonError
from dynamo_triton.kv import KVStore
from dynamo_triton.runtime.cluster_status import ClusterStatus, ModelEntry, WorkerEntry, collect

__all__ = ["RateHistory", "top"]

#: Frames of history the TREND sparkline shows.
TREND_WIDTH = 12


class RateHistory:
    """Requests per second of each (model, worker) between consecutive frames.

    The first frame of a worker shows its rate over the last minute (from ``/stats``); later
    frames the increase of its request counter since the previous frame.
    """

    def __init__(self, width: int = TREND_WIDTH):
        self.width = width
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._rates: dict[tuple[str, str], deque[float]] = {}

    def update(self, status: ClusterStatus, now: float) -> None:
        """Take in a frame collected at ``now`` (monotonic seconds).

        A worker's rate is its request counter's increase over the time between its two readings
        (its ``uptime_seconds``, read with the counter), else between the two frames.
        """
        seen = set()
        for model in status.models:
            for worker in model.workers:
                key = (model.name, worker.instance_id)
                seen.add(key)
                rates = self._rates.setdefault(key, deque(maxlen=self.width))
                if worker.load is None:
                    rates.append(0.0)
                    continue
                total = int(worker.load["requests_total"])
                at = worker.uptime_seconds if worker.uptime_seconds is not None else now
                previous = self._last.get(key)
                if previous is None or total < previous[1] or at <= previous[0]:  # first, or restarted
                    rates.append(float(worker.load["requests_per_second"]))
                else:
                    rates.append((total - previous[1]) / (at - previous[0]))
                self._last[key] = (at, total)
        for key in set(self._rates) - seen:
            self._rates.pop(key, None)
            self._last.pop(key, None)

    def rate(self, model: str, worker: WorkerEntry) -> float | None:
        """The latest rate, None when the worker's load is unknown."""
        rates = self._rates.get((model, worker.instance_id))
        return rates[-1] if rates and worker.load is not None else None

    def trend(self, model: str, worker: WorkerEntry) -> list[float]:
        return list(self._rates.get((model, worker.instance_id), ()))

    def model_rate(self, model: ModelEntry) -> float:
        return sum(self.rate(model.name, worker) or 0.0 for worker in model.workers)


def _model_table(model: ModelEntry, history: RateHistory, blocks: str) -> Table:
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    table.add_column("WORKER", no_wrap=True, min_width=8)
    table.add_column("STATE", no_wrap=True, min_width=12)
    table.add_column("REQ/S", justify="right", no_wrap=True, min_width=5)
    table.add_column("TREND", no_wrap=True, width=history.width)
    table.add_column("INFL", justify="right", no_wrap=True, min_width=4)
    table.add_column("P50", justify="right", no_wrap=True, min_width=6)
    table.add_column("P99", justify="right", no_wrap=True, min_width=6)
    table.add_column("ERR", justify="right", no_wrap=True, min_width=3)
    table.add_column("PID/HOST", no_wrap=True, overflow="ellipsis", max_width=12)
    workers = sorted(model.workers, key=lambda w: (-(history.rate(model.name, w) or 0.0), w.instance_id))
    for worker in workers:
        load = worker.load
        table.add_row(
            short(worker.instance_id),
            state_text(worker.state),
            rate(history.rate(model.name, worker)),
            Text(sparkline(history.trend(model.name, worker), history.width, blocks), style="cyan"),
            str(load["in_flight"]) if load else "-",
            latency(load["p50_ms"]) if load else "-",
            latency(load["p99_ms"]) if load else "-",
            str(load["errors"]) if load else "-",
            where(worker),
        )
    return table


def render_top(status: ClusterStatus | None, history: RateHistory, error: str, blocks: str) -> RenderableType:
    """One frame: a header line, then per namespace a table per model (busiest first) and its frontends."""
    clock = time.strftime("%H:%M:%S")
    parts: list[RenderableType] = []
    if status is None:
        parts.append(Text(f"dyntriton top · {clock}  q quits", style="bold"))
    else:
        workers = {w.instance_id for model in status.models for w in model.workers}
        workers |= {w.instance_id for w in status.workers_without_models}
        header = Text(f"dyntriton top · {status.store} store · ", style="bold")
        header.append(f"{len(workers)} worker{'s' if len(workers) != 1 else ''} · ")
        header.append(f"{len(status.frontends)} frontend{'s' if len(status.frontends) != 1 else ''} · {clock}")
        header.append("  q quits", style="dim")
        parts.append(header)
        if not status.models:
            parts.append(Text("no worker serves any model", style="yellow"))
        for namespace, models, _, frontends in by_namespace(status):
            parts.append(Text(""))
            parts.append(namespace_line(namespace))
            for model in sorted(models, key=lambda m: (-history.model_rate(m), m.name)):
                heading = Text(f"{rate(history.model_rate(model))} req/s  ", style="bold")
                parts.append(heading + model_heading(model, brief=True))
                parts.append(_model_table(model, history, blocks))
                parts.extend(system_notes(model.workers))
            if frontends:
                parts.append(Text(""))
                parts.append(Text("frontends (load over the last minute)", style="bold"))
                parts.append(frontends_table(frontends))
    if error:
        parts.append(Text(error, style="bold red"))
    return Group(*parts)


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, on_quit: Callable[[], None]) -> Iterator[None]:
    """Call ``on_quit`` on ``q`` typed on the terminal (cbreak mode while inside; restored after)."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def read() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data or b"q" in data or b"Q" in data:
            on_quit()

    tty.setcbreak(fd)
    loop.add_reader(fd, read)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _run(
    store: KVStore, namespace: str | None, models: tuple[str, ...], timeout: float, interval: float, console: Console
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    blocks = SPARK_BLOCKS if (console.encoding or "").lower().startswith("utf") else SPARK_ASCII
    history = RateHistory()
    status: ClusterStatus | None = None
    stopping = asyncio.ensure_future(stop.wait())
    try:
        with _keys(loop, stop.set), Live(console=console, screen=True, auto_refresh=False) as live:
            live.update(render_top(None, history, "reading the store...", blocks), refresh=True)
            async with aiohttp.ClientSession() as session:
                while not stop.is_set():
                    started = loop.time()
                    frame = asyncio.ensure_future(
                        collect(store, namespace, models=models, timeout=timeout, session=session)
                    )
                    await asyncio.wait({frame, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not frame.done():
                        frame.cancel()
                        with contextlib.suppress(asyncio.CancelledError, DyntritonError):
                            await frame
                        break
                    error = ""
                    try:
                        status = frame.result()
                        history.update(status, loop.time())
                    except DyntritonError as exc:
                        error = f"cannot read the {store.name} store: {exc.message} (retrying)"
                    live.update(render_top(status, history, error, blocks), refresh=True)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, interval - (loop.time() - started))):
                            await stop.wait()
    finally:
        stopping.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await store.close()


@uses("kv-store")
@click.command(cls=PanelCommand)
@store_options
@click.option("--model", "models", multiple=True, help="Show only this model (repeatable).")
@click.option(
    "--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds between frames."
)
@timeout_option
@click.pass_context
def top(
    ctx: click.Context,
    store_kv: str,
    namespace: str,
    models: tuple[str, ...],
    interval: float,
    timeout: float,
    **values: Any,
) -> None:
    """Show the cluster live: per model its workers by load, rates, latency; q or Ctrl-C quits.

    Every namespace of the store, unless --namespace (or DYN_NAMESPACE) names one.
    """
    console = Console(highlight=False)
    if not console.is_terminal:
        raise click.ClickException(
            "top draws on a terminal and its output is not one: use `dyntriton status` (or `status --json`) in scripts"
        )
    store = open_store(ctx, {**values, "store_kv": store_kv})
    asyncio.run(_run(store, chosen_namespace(ctx, namespace), models, timeout, interval, console))
