"""``dyntriton status``: which workers serve which models, their state and load, and the frontends, once.

Reads the cards of every namespace in the store (only ``--namespace``'s when it is given, on the
command line or as ``DYN_NAMESPACE``: a ``serve`` given none runs in a namespace of its own) and
every worker's ``/stats`` (concurrently, each within ``--timeout``); ``--json`` prints the
document of docs/status.md. Exits 0 when the store could be read, whatever the workers' states;
1 when ``--model`` names no served model or the store cannot be read.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Console

from dynamo_triton.cli.composition import PanelCommand, plugin_settings, uses
from dynamo_triton.cli.context import plugins_from
from dynamo_triton.cli.options import store_options
from dynamo_triton.cli.status_view import render_status
from dynamo_triton.errors import ConfigError
from dynamo_triton.kv import KVStore
from dynamo_triton.runtime.cluster_status import PROBE_TIMEOUT, ClusterStatus, collect

__all__ = ["chosen_namespace", "open_store", "status", "timeout_option"]


def open_store(ctx: click.Context, values: Mapping[str, Any]) -> KVStore:
    """The configured store (built from its plugin's options in ``values``); a process-local store
    (``mem``) is refused: it lives inside one process, so there is nothing to see from outside."""
    plugins = plugins_from(ctx)
    name = values["store_kv"]
    if plugins.has_trait("kv-store", name, "process-local"):
        raise ConfigError(
            f"the {name} store lives inside one process: another command cannot see its cards",
            hint="run the cluster on a shared store (--store-kv file, etcd or nats) to look at it from outside",
        )
    settings = plugin_settings(plugins, "kv-store", name, values)
    return plugins.kv_store(name) if settings is None else plugins.kv_store(name, settings)


def chosen_namespace(ctx: click.Context, namespace: str) -> str | None:
    """``--namespace`` when the user gave it (option or ``DYN_NAMESPACE``), else None: every namespace."""
    given = ctx.get_parameter_source("namespace") is not click.core.ParameterSource.DEFAULT
    return namespace if given else None


timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0.05),
    default=PROBE_TIMEOUT,
    show_default=True,
    help="Seconds each worker's system port gets to answer (all are asked at once); a worker connected "
    "but silent that long is shown unresponsive.",
)


async def _collect(store: KVStore, namespace: str | None, models: tuple[str, ...], timeout: float) -> ClusterStatus:
    try:
        return await collect(store, namespace, models=models, timeout=timeout)
    finally:
        await store.close()


@uses("kv-store")
@click.command(cls=PanelCommand)
@store_options
@click.option("--model", "models", multiple=True, help="Show only this model (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON document (docs/status.md).")
@timeout_option
@click.pass_context
def status(
    ctx: click.Context,
    store_kv: str,
    namespace: str,
    models: tuple[str, ...],
    as_json: bool,
    timeout: float,
    **values: Any,
) -> None:
    """Show every model, the workers serving it (state, load over the last minute) and the frontends.

    Every namespace of the store, unless --namespace (or DYN_NAMESPACE) names one.

    Exit codes: 0 when the store was read; 1 when --model matches no served model or the store
    cannot be read.
    """
    store = open_store(ctx, {**values, "store_kv": store_kv})
    only = chosen_namespace(ctx, namespace)
    result = asyncio.run(_collect(store, only, models, timeout))
    document: dict[str, Any] = result.to_dict()
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        Console(highlight=False).print(render_status(result))
    where = f"namespace {only!r}" if only is not None else "any namespace"
    missing = sorted(set(models) - {model.name for model in result.models})
    if missing:
        click.echo(f"no worker serves {', '.join(missing)} in {where} of the {store_kv} store", err=True)
        sys.exit(1)
    if not result.models and not as_json:
        click.echo(f"no worker serves any model in {where} of the {store_kv} store", err=True)
