"""``dyntriton worker``: load models into a backend, register them, serve until SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import replace

import click

from dynamo_triton.backend import BackendSettings
from dynamo_triton.cli.addresses import dial_address
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.exits import starting
from dynamo_triton.cli.options import (
    advertise_host_option,
    backend_options,
    model_control_option,
    store_options,
    store_settings,
    transport_options,
    transport_settings,
    worker_options,
)
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.launch import Shutdown, start_worker
from dynamo_triton.runtime.worker import WorkerSettings

__all__ = ["backend_settings", "worker"]

log = logging.getLogger("dyntriton.worker")


def backend_settings(
    model_repository: str,
    backend_directory: str | None,
    log_verbose: int,
    triton_home: str | None,
    model_load_retries: int = 0,
) -> BackendSettings:
    """BackendSettings from the shared CLI options (backend-specific ones in ``extra``)."""
    extra: dict[str, object] = {"model_load_retries": model_load_retries}
    if triton_home:
        extra["triton_home"] = triton_home
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
@advertise_host_option
@transport_options
@model_control_option
@click.pass_context
def worker(ctx: click.Context, **options: object) -> None:
    """Run a worker: load models, publish their cards under a lease, serve requests, drain on SIGTERM.

    Exits 3 when it cannot start (store, ports, backend, a model that does not load).
    """
    plugins = plugins_from(ctx)
    # The default system port taken (a second worker on this host): any free port, said in the start line.
    fallback = ctx.get_parameter_source("system_port") is click.core.ParameterSource.DEFAULT
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_run(plugins, **options, system_port_fallback=fallback))  # type: ignore[arg-type]


_LOOPBACK = ("127.", "::1", "localhost")


def _check_reachable(worker_host: str, advertise_host: str) -> None:
    """Warn when the worker advertises another host's reachable address but binds loopback only."""
    if worker_host.startswith(_LOOPBACK) and not advertise_host.startswith(_LOOPBACK):
        log.warning(
            "--advertise-host %s, but the transport binds %s: frontends on other hosts cannot connect; "
            "add --worker-host 0.0.0.0 (or %s)",
            advertise_host,
            worker_host,
            advertise_host,
        )


async def _run(
    plugins: Plugins,
    *,
    store_kv: str,
    etcd_endpoints: str | None,
    file_kv_root: str | None,
    namespace: str,
    backend: str,
    models: tuple[str, ...],
    model_repository: str,
    backend_directory: str | None,
    log_verbose: int,
    model_load_retries: int,
    triton_home: str | None,
    transport: str,
    worker_host: str,
    worker_port: tuple[int, int],
    lease_ttl: float,
    system_host: str,
    system_port: int,
    transport_tls_cert: str | None = None,
    transport_tls_key: str | None = None,
    transport_tls_ca: str | None = None,
    transport_token: str | None = None,
    transport_heartbeat: float = 1.0,
    model_control: str = "none",
    advertise_host: str | None = None,
    system_port_fallback: bool = False,
) -> None:
    protection = transport_settings(
        transport_tls_cert, transport_tls_key, transport_tls_ca, transport_token, transport_heartbeat
    )
    if advertise_host:
        _check_reachable(worker_host, advertise_host)
        # A transport option (the tcp transport reads it): the card then names this host.
        protection = replace(protection, options={**protection.options, "advertise_host": advertise_host})
    os.environ.pop("DYN_TRANSPORT_TOKEN", None)  # read: Triton's stubs (and model code) need not see it
    with starting():
        store = plugins.kv_store(store_kv, **store_settings(store_kv, etcd_endpoints, file_kv_root))
    shutdown = Shutdown()
    try:
        with starting():
            stack = await start_worker(
                plugins,
                store,
                backend=backend,
                backend_settings=backend_settings(
                    model_repository, backend_directory, log_verbose, triton_home, model_load_retries
                ),
                transport=transport,
                settings=WorkerSettings(
                    namespace=namespace,
                    models=models,
                    host=worker_host,
                    port=worker_port[0],
                    port_last=worker_port[1],
                    lease_ttl=lease_ttl,
                    model_control=model_control,
                ),
                system_host=system_host,
                system_port=system_port,
                transport_settings=protection,
                system_port_fallback=system_port_fallback,
            )
        system = f"http://{dial_address(system_host, stack.system.port)}/metrics" if stack.system else "-"
        click.echo(
            f"worker {stack.worker.instance_id} serving {', '.join(sorted(stack.worker.models)) or 'no model yet'} "
            f"at {stack.worker.address} (store {store_kv}, namespace {namespace}, system {system})",
            err=True,
        )
        shutdown.started()
        signame = await shutdown.wait()
        log.info("%s received: draining", signame)
        await stack.stop()
    finally:
        shutdown.close()
        await store.close()
