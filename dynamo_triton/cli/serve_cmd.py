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
import sys
import time
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dynamo_triton.cli.children import die_with_parent, forwarded_options, stop_children
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.frontend_cmd import FORWARDED, frontend_config, start_extra_frontends
from dynamo_triton.cli.options import backend_options, frontend_options, store_options, worker_options
from dynamo_triton.cli.worker_cmd import backend_settings
from dynamo_triton.errors import DyntritonError
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.launch import FrontendStack, Shutdown, WorkerStack, start_frontend, start_worker
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
    "--frontends",
    type=click.IntRange(min=1),
    default=1,
    help="Frontend processes sharing the gRPC and HTTP ports (SO_REUSEPORT); more than 1 needs a shared store.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Run one worker inside this process (no sockets between frontend and worker). Implied by --store-kv mem.",
)
@click.pass_context
def serve(ctx: click.Context, **options: Any) -> None:
    """Run a KServe frontend and workers for the models of a Triton model repository."""
    frontend_argv = ["frontend", *forwarded_options(ctx, FORWARDED, {}), "--reuse-port"]
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_serve(plugins_from(ctx), ServeOptions(**options), frontend_argv))


@dataclass(frozen=True)
class ServeOptions:
    """Every option of ``serve``, typed (the click options are the source of names and defaults)."""

    store_kv: str
    namespace: str
    backend: str
    models: tuple[str, ...]
    model_repository: str
    backend_directory: str | None
    log_verbose: int
    triton_home: str | None
    transport: str
    host: str
    lease_ttl: float
    system_port: int
    grpc_host: str
    grpc_port: int
    http_port: int
    http_max_input_size: int
    router: str
    server_name: str
    stream_window: int
    max_message_size: int
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    workers: int
    frontends: int
    in_process: bool

    def worker_argv(self, index: int) -> list[str]:
        """The ``dyntriton worker`` command line for child ``index``."""
        argv = [sys.executable, "-m", "dynamo_triton", "worker", "--store-kv", self.store_kv]
        argv += ["--namespace", self.namespace, "--backend", self.backend]
        argv += ["--model-repository", self.model_repository]
        for model in self.models:
            argv += ["--model", model]
        if self.backend_directory:
            argv += ["--backend-directory", self.backend_directory]
        if self.triton_home:
            argv += ["--triton-home", self.triton_home]
        argv += ["--log-verbose", str(self.log_verbose), "--transport", self.transport]
        argv += ["--host", self.host, "--lease-ttl", str(self.lease_ttl)]
        argv += ["--system-port", str(self.system_port + index if self.system_port else 0)]
        return argv


async def _serve(plugins: Plugins, opts: ServeOptions, frontend_argv: list[str]) -> None:
    in_process = opts.in_process or opts.store_kv == "mem"
    if in_process and opts.workers > 1:
        raise click.UsageError("--workers > 1 needs separate processes: use a shared store (file or etcd)")
    if in_process and opts.frontends > 1:
        raise click.UsageError(
            "--frontends > 1 needs separate processes that share a store: use --store-kv file or etcd"
        )
    config = frontend_config(
        namespace=opts.namespace,
        grpc_host=opts.grpc_host,
        grpc_port=opts.grpc_port,
        http_port=opts.http_port,
        http_max_input_size=opts.http_max_input_size,
        router=opts.router,
        server_name=opts.server_name,
        stream_window=opts.stream_window,
        max_message_size=opts.max_message_size,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        tls_client_ca=opts.tls_client_ca,
        reuse_port=opts.frontends > 1,
    )
    store = plugins.kv_store(opts.store_kv)
    shutdown = Shutdown()
    children: list[asyncio.subprocess.Process] = []
    frontends: list[asyncio.subprocess.Process] = []
    frontend: FrontendStack | None = None
    local: WorkerStack | None = None
    try:
        frontend = await start_frontend(plugins, store, config)
        frontends = await start_extra_frontends(opts.frontends - 1, frontend_argv, frontend)
        if in_process:
            local = await start_worker(
                plugins,
                store,
                backend=opts.backend,
                backend_settings=backend_settings(
                    opts.model_repository, opts.backend_directory, opts.log_verbose, opts.triton_home
                ),
                transport="inproc" if opts.transport == "tcp" else opts.transport,
                settings=WorkerSettings(namespace=opts.namespace, models=opts.models, lease_ttl=opts.lease_ttl),
                system_port=opts.system_port,
            )
        else:
            for index in range(opts.workers):
                argv = opts.worker_argv(index)
                children.append(await asyncio.create_subprocess_exec(*argv, preexec_fn=die_with_parent))
            await _wait_for_workers(frontend, children, opts.workers, opts.models)
        _print_summary(frontend, config.host, opts.store_kv, 0 if in_process else opts.workers)
        shutdown.started()
        await _wait_for_shutdown_or_children(shutdown, children)
    finally:
        shutdown.close()
        await stop_children(frontends)
        await stop_children(children)
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


async def _wait_for_shutdown_or_children(shutdown: Shutdown, children: list[asyncio.subprocess.Process]) -> None:
    """Return on SIGINT/SIGTERM, or when every worker child has exited."""
    waiter = asyncio.ensure_future(shutdown.wait())
    try:
        while not waiter.done():
            if children and all(child.returncode is not None for child in children):
                log.error("every worker process exited; stopping")
                return
            await asyncio.wait({waiter}, timeout=0.5)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


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
