"""``dyntriton worker``: load models into a backend, register them, serve until SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any

import click

from dynamo_triton.cli.addresses import dial_address
from dynamo_triton.cli.composition import PanelCommand, plugin_settings, uses
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.exits import starting
from dynamo_triton.cli.options import (
    advertise_host_option,
    backend_options,
    model_control_option,
    store_options,
    trace_config,
    trace_options,
    transport_options,
    worker_options,
)
from dynamo_triton.errors import ConfigError
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.launch import Shutdown, start_worker
from dynamo_triton.runtime.worker import WorkerSettings
from dynamo_triton.settings import build
from dynamo_triton.transport import TransportSettings

__all__ = ["store_from", "transport_settings_from", "worker"]

log = logging.getLogger("dyntriton.worker")


def store_from(plugins: Plugins, values: Mapping[str, Any]) -> Any:
    """The KV store ``--store-kv`` names, built from its plugin's settings in click's ``values``."""
    name = values["store_kv"]
    settings = plugin_settings(plugins, "kv-store", name, values)
    return plugins.kv_store(name) if settings is None else plugins.kv_store(name, settings)


def transport_settings_from(plugins: Plugins, name: str | None, values: Mapping[str, Any], **overrides: Any) -> Any:
    """The settings of transport ``name`` (None: the common settings only) from click's ``values``; TLS files
    go together (a usage error)."""
    if name is None:
        settings = build(TransportSettings, values, **overrides)
    else:
        settings = plugin_settings(plugins, "transport", name, values, **overrides)
    try:
        settings.check()
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None
    return settings


@uses("kv-store", "transport", "backend")
@click.command(cls=PanelCommand)
@store_options
@backend_options
@worker_options
@advertise_host_option
@transport_options
@model_control_option
@trace_options
@click.pass_context
def worker(ctx: click.Context, **options: Any) -> None:
    """Run a worker: load models, publish their cards under a lease, serve requests, drain on SIGTERM.

    Exits 3 when it cannot start (store, ports, backend, a model that does not load).
    """
    plugins = plugins_from(ctx)
    # The default system port taken (a second worker on this host): any free port, said in the start line.
    fallback = ctx.get_parameter_source("system_port") is click.core.ParameterSource.DEFAULT
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_run(plugins, options, system_port_fallback=fallback))


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


async def _run(plugins: Plugins, values: dict[str, Any], *, system_port_fallback: bool = False) -> None:
    worker_host, advertise_host = values["worker_host"], values.get("advertise_host")
    transport, namespace, store_kv = values["transport"], values["namespace"], values["store_kv"]
    options = {"advertise_host": advertise_host} if advertise_host else {}
    if advertise_host:
        _check_reachable(worker_host, advertise_host)
    # the transport's settings: the card then names --advertise-host (a transport option, the tcp transport reads it)
    protection = transport_settings_from(plugins, transport, values, options=options)
    os.environ.pop("DYN_TRANSPORT_TOKEN", None)  # read: Triton's stubs (and model code) need not see it
    with starting():
        store = store_from(plugins, values)
    shutdown = Shutdown()
    try:
        with starting():
            stack = await start_worker(
                plugins,
                store,
                backend=values["backend"],
                backend_settings=plugin_settings(plugins, "backend", values["backend"], values),
                transport=transport,
                settings=WorkerSettings(
                    namespace=namespace,
                    models=values["models"],
                    host=worker_host,
                    port=values["worker_port"][0],
                    port_last=values["worker_port"][1],
                    lease_ttl=values["lease_ttl"],
                    model_control=values["model_control"],
                ),
                system_host=values["system_host"],
                system_port=values["system_port"],
                transport_settings=protection,
                system_port_fallback=system_port_fallback,
                trace=trace_config(values),
            )
        system = f"http://{dial_address(values['system_host'], stack.system.port)}/metrics" if stack.system else "-"
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
