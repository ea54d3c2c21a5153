"""``dyntriton worker``: load models into a backend, register them, serve until SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import click

from dynamo_triton.backend import BackendSettings
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.options import backend_options, store_options, worker_options
from dynamo_triton.runtime.launch import Shutdown, start_worker
from dynamo_triton.runtime.worker import WorkerSettings

__all__ = ["backend_settings", "worker"]

log = logging.getLogger("dyntriton.worker")


def backend_settings(
    model_repository: str, backend_directory: str | None, log_verbose: int, triton_home: str | None
) -> BackendSettings:
    """BackendSettings from the shared CLI options."""
    extra = {"triton_home": triton_home} if triton_home else {}
    return BackendSettings(
        model_repository=model_repository,
        backend_directory=backend_directory,
        log_verbose=log_verbose,
        extra=extra,
    )


@click.command()
@store_options
@backend_options
@worker_options
@click.pass_context
def worker(ctx: click.Context, **options: object) -> None:
    """Run a worker: load models, publish their cards under a lease, serve requests, drain on SIGTERM."""
    plugins = plugins_from(ctx)
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_run(plugins, **options))  # type: ignore[arg-type]


async def _run(
    plugins,
    *,
    store_kv: str,
    namespace: str,
    backend: str,
    models: tuple[str, ...],
    model_repository: str,
    backend_directory: str | None,
    log_verbose: int,
    triton_home: str | None,
    transport: str,
    host: str,
    lease_ttl: float,
    system_port: int,
) -> None:
    store = plugins.kv_store(store_kv)
    shutdown = Shutdown()
    try:
        stack = await start_worker(
            plugins,
            store,
            backend=backend,
            backend_settings=backend_settings(model_repository, backend_directory, log_verbose, triton_home),
            transport=transport,
            settings=WorkerSettings(namespace=namespace, models=models, host=host, lease_ttl=lease_ttl),
            system_port=system_port,
        )
        click.echo(
            f"worker {stack.worker.instance_id} serving {', '.join(sorted(stack.worker.models))} "
            f"at {stack.worker.address} (store {store_kv}, system port "
            f"{stack.system.port if stack.system else '-'})",
            err=True,
        )
        shutdown.started()
        signame = await shutdown.wait()
        log.info("%s received: draining", signame)
        await stack.stop()
    finally:
        shutdown.close()
        await store.close()
