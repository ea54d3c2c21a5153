"""``dyntriton serve``: a frontend and its workers in one command, stopped together.

With ``--store-kv mem`` (or ``--in-process``) the worker runs inside this
process and requests skip the network (``inproc`` transport). Otherwise each of
the ``--workers N`` workers is a ``dyntriton worker`` child process, exactly what
you would run by hand on other hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from dynamo_triton.cli.context import plugins_from
from dynamo_triton.cli.frontend_cmd import frontend_config
from dynamo_triton.cli.options import backend_options, frontend_options, store_options, worker_options
from dynamo_triton.cli.worker_cmd import backend_settings
from dynamo_triton.errors import DyntritonError
from dynamo_triton.runtime.launch import FrontendStack, WorkerStack, start_frontend, start_worker, wait_for_shutdown
from dynamo_triton.runtime.worker import WorkerSettings

__all__ = ["serve"]

log = logging.getLogger("dyntriton.serve")

#: Seconds ``serve`` waits for every worker to register before giving up.
STARTUP_TIMEOUT = 300.0


@click.command()
@store_options
@backend_options
@worker_options
@frontend_options
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Worker processes to start.")
@click.option(
    "--in-process",
    is_flag=True,
    help="Run one worker inside this process (no sockets between frontend and worker). Implied by --store-kv mem.",
)
@click.pass_context
def serve(ctx: click.Context, **options: object) -> None:
    """Run a KServe frontend and workers for the models of a Triton model repository."""
    asyncio.run(_serve(ctx, **options))  # type: ignore[arg-type]


def _worker_argv(options: dict[str, object], index: int) -> list[str]:
    """The ``dyntriton worker`` command line for child ``index``, from serve's options."""
    argv = [sys.executable, "-m", "dynamo_triton", "worker"]
    argv += ["--store-kv", str(options["store_kv"]), "--namespace", str(options["namespace"])]
    argv += ["--backend", str(options["backend"]), "--model-repository", str(options["model_repository"])]
    for model in options["models"]:  # type: ignore[attr-defined]
        argv += ["--model", str(model)]
    if options["backend_directory"]:
        argv += ["--backend-directory", str(options["backend_directory"])]
    if options["triton_home"]:
        argv += ["--triton-home", str(options["triton_home"])]
    argv += ["--log-verbose", str(options["log_verbose"]), "--transport", str(options["transport"])]
    argv += ["--host", str(options["host"]), "--lease-ttl", str(options["lease_ttl"])]
    system_port = int(options["system_port"])  # type: ignore[call-overload]
    argv += ["--system-port", str(system_port + index if system_port else 0)]
    return argv


async def _serve(ctx: click.Context, **options: object) -> None:
    plugins = plugins_from(ctx)
    store_kv = str(options["store_kv"])
    in_process = bool(options.pop("in_process")) or store_kv == "mem"
    workers = int(options.pop("workers"))  # type: ignore[call-overload]
    if in_process and workers > 1:
        raise click.UsageError("--workers > 1 needs separate processes: use a shared store (file or etcd)")
    config = frontend_config(
        namespace=str(options["namespace"]),
        grpc_host=str(options["grpc_host"]),
        grpc_port=int(options["grpc_port"]),  # type: ignore[call-overload]
        http_port=int(options["http_port"]),  # type: ignore[call-overload]
        router=str(options["router"]),
        max_message_size=int(options["max_message_size"]),  # type: ignore[call-overload]
        tls_cert=options["tls_cert"],  # type: ignore[arg-type]
        tls_key=options["tls_key"],  # type: ignore[arg-type]
        tls_client_ca=options["tls_client_ca"],  # type: ignore[arg-type]
    )
    store = plugins.kv_store(store_kv)
    children: list[asyncio.subprocess.Process] = []
    frontend: FrontendStack | None = None
    local: WorkerStack | None = None
    try:
        frontend = await start_frontend(plugins, store, config)
        if in_process:
            transport = "inproc" if options["transport"] == "tcp" else str(options["transport"])
            local = await start_worker(
                plugins,
                store,
                backend=str(options["backend"]),
                backend_settings=backend_settings(
                    str(options["model_repository"]),
                    options["backend_directory"],  # type: ignore[arg-type]
                    int(options["log_verbose"]),  # type: ignore[call-overload]
                    options["triton_home"],  # type: ignore[arg-type]
                ),
                transport=transport,
                settings=WorkerSettings(
                    namespace=str(options["namespace"]),
                    models=tuple(options["models"]),  # type: ignore[call-overload]
                    lease_ttl=float(options["lease_ttl"]),  # type: ignore[arg-type]
                ),
                system_port=int(options["system_port"]),  # type: ignore[call-overload]
            )
        else:
            children = [await asyncio.create_subprocess_exec(*_worker_argv(options, i)) for i in range(workers)]
            await _wait_for_workers(frontend, children, workers, tuple(options["models"]))  # type: ignore[arg-type]
        _print_summary(frontend, config.host, store_kv, workers if not in_process else 0)
        await _wait_for_shutdown_or_children(children)
    finally:
        await _stop_children(children)
        if local is not None:
            await local.stop()
        if frontend is not None:
            await frontend.stop()
        await store.close()


async def _wait_for_workers(
    frontend: FrontendStack, children: list[asyncio.subprocess.Process], expected: int, models: tuple[str, ...]
) -> None:
    """Wait until ``expected`` distinct worker instances registered (and every asked model is served)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        for child in children:
            if child.returncode is not None:
                raise DyntritonError(
                    f"a worker exited with code {child.returncode} before registering",
                    hint="read its error above; `dyntriton doctor` checks the Triton installation",
                )
        instances = {inst.instance_id for inst in frontend.table.all_instances()}
        served = set(frontend.table.model_names())
        if len(instances) >= expected and set(models) <= served:
            return
        await asyncio.sleep(0.1)
    raise DyntritonError(f"workers did not register within {STARTUP_TIMEOUT:g} s", status="DEADLINE_EXCEEDED")


async def _wait_for_shutdown_or_children(children: list[asyncio.subprocess.Process]) -> None:
    """Return on SIGINT/SIGTERM, or when every worker child has exited."""
    shutdown = asyncio.ensure_future(wait_for_shutdown())
    try:
        while not shutdown.done():
            if children and all(child.returncode is not None for child in children):
                log.error("every worker process exited; stopping")
                return
            await asyncio.wait({shutdown}, timeout=0.5)
    finally:
        shutdown.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shutdown


async def _stop_children(children: list[asyncio.subprocess.Process], timeout: float = 40.0) -> None:
    """SIGTERM every worker (they drain), then SIGKILL whichever is still there after ``timeout``."""
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.wait(), timeout)
        except TimeoutError:
            log.warning("worker pid %d did not stop in %g s; killing it", child.pid, timeout)
            child.kill()
            await child.wait()


def _print_summary(frontend: FrontendStack, host: str, store_kv: str, workers: int) -> None:
    table = Table(title="dyntriton is serving", show_header=True)
    for column in ("model", "version", "instances", "decoupled", "inputs", "outputs"):
        table.add_column(column)
    for model in frontend.service.models():
        inputs = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in model.metadata.inputs)
        outputs = ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in model.metadata.outputs)
        table.add_row(model.name, model.version, str(model.instances), str(model.decoupled), inputs, outputs)
    console = Console(stderr=True)
    console.print(table)
    where = f"KServe gRPC {host}:{frontend.grpc.port}"
    if frontend.http is not None:
        where += f", HTTP {host}:{frontend.http.port}"
    mode = f"{workers} worker process(es)" if workers else "in-process worker"
    console.print(f"{where}; store {store_kv}; {mode}; pid {os.getpid()}. Ctrl-C stops everything.")
