"""``dyntriton store``: look at and follow what is in a KV store (model cards, leases)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click

from dynamo_triton.cli.context import plugins_from
from dynamo_triton.cli.options import store_connection_options, store_connection_overrides, store_settings
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


@click.group()
@store_connection_options
@click.pass_context
def store(ctx: click.Context, store_kv: str, etcd_endpoints: str | None, file_kv_root: str | None) -> None:
    """Inspect and watch a KV store (store options go before or after the sub-command)."""
    ctx.obj = {"store_kv": store_kv, "etcd_endpoints": etcd_endpoints, "file_kv_root": file_kv_root}


def _chosen(ctx: click.Context, overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The store name and its options: the sub-command's values where given, else the group's."""
    chosen = dict(ctx.obj)
    chosen.update({name: value for name, value in overrides.items() if value is not None})
    return chosen["store_kv"], store_settings(chosen["store_kv"], chosen["etcd_endpoints"], chosen["file_kv_root"])


def _open(ctx: click.Context, overrides: dict[str, Any]) -> KVStore:
    name, options = _chosen(ctx, overrides)
    return plugins_from(ctx).kv_store(name, **options)


async def _with_store(ctx: click.Context, overrides: dict[str, Any], work: Any) -> Any:
    kv = _open(ctx, overrides)
    try:
        return await work(kv)
    finally:
        await kv.close()


@store.command("ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--values", is_flag=True, help="Print values too.")
@store_connection_overrides
@click.pass_context
def ls(ctx: click.Context, prefix: str, as_json: bool, values: bool, **overrides: Any) -> None:
    """List keys under PREFIX (all keys when omitted); says so on stderr when there are none."""
    entries: list[KVEntry] = asyncio.run(_with_store(ctx, overrides, lambda kv: kv.list(prefix)))
    if not entries:
        name, options = _chosen(ctx, overrides)
        where = f" at {next(iter(options.values()))}" if options else ""
        under = f" under {prefix!r}" if prefix else ""
        click.echo(f"no keys{under} in the {name} store{where}", err=True)
    for entry in entries:
        if as_json:
            click.echo(json.dumps(_entry_json(entry)))
        elif values:
            click.echo(f"{entry.key}\t{_show(entry.value)}")
        else:
            click.echo(entry.key)


@store.command("get")
@click.argument("key")
@store_connection_overrides
@click.pass_context
def get(ctx: click.Context, key: str, **overrides: Any) -> None:
    """Print the value at KEY (exit code 1 if absent)."""
    entry: KVEntry | None = asyncio.run(_with_store(ctx, overrides, lambda kv: kv.get(key)))
    if entry is None:
        click.echo(f"no key {key!r} in the {_chosen(ctx, overrides)[0]} store", err=True)
        sys.exit(1)
    click.echo(_show(entry.value))


@store.command("watch")
@click.argument("prefix", default="")
@click.option("--count", type=int, help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@store_connection_overrides
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
