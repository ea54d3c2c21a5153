"""``dyntriton plugins``: what is installed, who provides what, and what is broken."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from dynamo_triton.cli.context import plugins_from

__all__ = ["plugins"]

_STATUS_STYLE = {"ok": "green", "error": "red", "conflict": "red", "disabled": "yellow"}


@click.group()
def plugins() -> None:
    """Inspect installed dyntriton plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.pass_context
def list_plugins(ctx: click.Context, as_json: bool) -> None:
    """List every plugin: distribution, version, what it provides, hooks and status.

    Plugins named in DYNTRITON_PLUGINS have no distribution; they show as ``(DYNTRITON_PLUGINS)``.
    """
    manager = plugins_from(ctx)
    records = sorted(manager.records, key=lambda r: (not r.builtin, r.name))
    if as_json:
        click.echo(json.dumps([record.as_dict() for record in records], indent=2))
        return
    table = Table(title="dyntriton plugins")
    # Names users type (plugins, providers, hooks) never wrap or truncate; the rest folds.
    table.add_column("plugin", no_wrap=True)
    table.add_column("distribution", overflow="fold")
    table.add_column("provides", overflow="fold")
    table.add_column("registers", no_wrap=True)  # the dyntriton_register_* hooks it implements
    table.add_column("status", overflow="fold")
    for record in records:
        provides = "\n".join(f"{kind}: {name}" for kind, name in record.provides) or "-"
        hooks = "\n".join(hook.removeprefix("dyntriton_register_") for hook in record.hooks) or "-"
        status = f"[{_STATUS_STYLE.get(record.status, 'white')}]{record.status}[/]"
        if record.error:
            status += f"\n{record.error}"
        if record.hint:
            status += f"\n[dim]fix: {record.hint}[/]"
        dist = f"{record.distribution} {record.version}".strip() or f"({record.source})"
        table.add_row(record.name, dist, provides, hooks, status)
    Console().print(table)
