"""``dyntriton store``: look at and follow what is in a KV store (model cards, leases)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click

from dynamo_triton.cli.composition import PanelCommand, PanelGroup, plugin_settings, uses
from dynamo_triton.cli.context import plugins_from
from dynamo_triton.cli.options import store_choice_options, store_choice_overrides
from dynamo_triton.kv import KVEntry, KVStore

__all__ = ["store"]


def _show(value: bytes) -> str:
    """Values as text when they are UTF-8, else as a hex preview."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return f"<{len(value)} bytes: {value[:32].hex()}{'...' if len(value) > 32 else ''}>"


def _entry_json(entry: KVEntry) -> dict[str, Any]:
    return {"key": entry.key, "value": _show(entry.value), "revision": entry.revision, "lease": entry.lease}


@uses("kv-store")
@click.group(cls=PanelGroup)
@store_choice_options
@click.pass_context
def store(ctx: click.Context, **values: Any) -> None:
    """Inspect and watch a KV store (store options go before or after the sub-command)."""
    ctx.obj = values


def _chosen(ctx: click.Context, overrides: dict[str, Any]) -> tuple[str, Any]:
    """The store name and its settings: the sub-command's values where given, else the group's."""
    chosen = dict(ctx.obj)
    chosen.update({name: value for name, value in overrides.items() if value not in (None, ())})
    name = chosen["store_kv"]
    return name, plugin_settings(plugins_from(ctx), "kv-store", name, chosen)


def _open(ctx: click.Context, overrides: dict[str, Any]) -> KVStore:
    name, settings = _chosen(ctx, overrides)
    plugins = plugins_from(ctx)
    return plugins.kv_store(name) if settings is None else plugins.kv_store(name, settings)


def _where(settings: Any) -> str:
    """`` at <first setting>`` (the folder, the endpoints: what says where the store is) for messages, or ""."""
    import dataclasses

    if settings is None or not dataclasses.is_dataclass(settings) or not dataclasses.fields(settings):
        return ""
    first = getattr(settings, dataclasses.fields(settings)[0].name)
    return f" at {first}" if first else ""


async def _with_store(ctx: click.Context, overrides: dict[str, Any], work: Any) -> Any:
    kv = _open(ctx, overrides)
    try:
        return await work(kv)
    finally:
        await kv.close()


@uses("kv-store", override=True)
@store.command(cls=PanelCommand, name="ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--values", is_flag=True, help="Print values too.")
@store_choice_overrides
@click.pass_context
def ls(ctx: click.Context, prefix: str, as_json: bool, values: bool, **overrides: Any) -> None:
    """List keys under PREFIX (all keys when omitted); says so on stderr when there are none."""
    entries: list[KVEntry] = asyncio.run(_with_store(ctx, overrides, lambda kv: kv.list(prefix)))
    if not entries:
        name, settings = _chosen(ctx, overrides)
        where = _where(settings)
        under = f" under {prefix!r}" if prefix else ""
        click.echo(f"no keys{under} in the {name} store{where}", err=True)
    for entry in entries:
        if as_json:
            click.echo(json.dumps(_entry_json(entry)))
        elif values:
            click.echo(f"{entry.key}\t{_show(entry.value)}")
        else:
            click.echo(entry.key)


@uses("kv-store", override=True)
@store.command(cls=PanelCommand, name="get")
@click.argument("key")
@store_choice_overrides
@click.pass_context
def get(ctx: click.Context, key: str, **overrides: Any) -> None:
    """Print the value at KEY (exit code 1 if absent)."""
    entry: KVEntry | None = asyncio.run(_with_store(ctx, overrides, lambda kv: kv.get(key)))
    if entry is None:
        click.echo(f"no key {key!r} in the {_chosen(ctx, overrides)[0]} store", err=True)
        sys.exit(1)
    click.echo(_show(entry.value))


@uses("kv-store", override=True)
@store.command(cls=PanelCommand, name="watch")
@click.argument("prefix", default="")
@click.option("--count", type=int, help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@store_choice_overrides
@click.pass_context
def watch(ctx: click.Context, prefix: str, count: int | None, timeout: float | None, **overrides: Any) -> None:
    """Print the keys under PREFIX, then every put and delete as JSON lines, until Ctrl-C."""

    async def follow(kv: KVStore) -> None:
        async with kv.watch(prefix) as events:
            for entry in events.snapshot:
                click.echo(json.dumps({"event": "existing", **_entry_json(entry)}))
            seen = 0
            async for event in events:
                line: dict[str, Any] = {"event": event.kind.value, "key": event.key, "revision": event.revision}
                if event.value is not None:
                    line["value"] = _show(event.value)
                click.echo(json.dumps(line), nl=True)
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return

    async def bounded(kv: KVStore) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await follow(kv)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_with_store(ctx, overrides, bounded))
