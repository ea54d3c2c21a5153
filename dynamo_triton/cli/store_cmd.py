"""``dyntriton store``: look at and follow what is in a KV store (model cards, leases)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import click

from dynamo_triton.cli.context import plugins_from
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
@click.option("--store-kv", envvar="DYN_STORE_KV", default="file", show_envvar=True, help="Which KV store.")
@click.option("--etcd-endpoints", envvar="ETCD_ENDPOINTS", help="etcd endpoints (for --store-kv etcd).")
@click.option("--file-kv-root", envvar="DYN_FILE_KV", help="Folder of the file store (for --store-kv file).")
@click.pass_context
def store(ctx: click.Context, store_kv: str, etcd_endpoints: str | None, file_kv_root: str | None) -> None:
    """Inspect and watch a KV store."""
    options: dict[str, Any] = {}
    if store_kv == "etcd" and etcd_endpoints:
        options["endpoints"] = etcd_endpoints
    if store_kv == "file" and file_kv_root:
        options["root"] = file_kv_root
    ctx.obj = (store_kv, options)


def _open(ctx: click.Context) -> KVStore:
    name, options = ctx.obj
    return plugins_from(ctx).kv_store(name, **options)


async def _with_store(ctx: click.Context, work: Any) -> Any:
    kv = _open(ctx)
    try:
        return await work(kv)
    finally:
        await kv.close()


@store.command("ls")
@click.argument("prefix", default="")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--values", is_flag=True, help="Print values too.")
@click.pass_context
def ls(ctx: click.Context, prefix: str, as_json: bool, values: bool) -> None:
    """List keys under PREFIX (all keys when omitted)."""
    entries: list[KVEntry] = asyncio.run(_with_store(ctx, lambda kv: kv.list(prefix)))
    for entry in entries:
        if as_json:
            click.echo(json.dumps(_entry_json(entry)))
        elif values:
            click.echo(f"{entry.key}\t{_show(entry.value)}")
        else:
            click.echo(entry.key)


@store.command("get")
@click.argument("key")
@click.pass_context
def get(ctx: click.Context, key: str) -> None:
    """Print the value at KEY (exit code 1 if absent)."""
    entry: KVEntry | None = asyncio.run(_with_store(ctx, lambda kv: kv.get(key)))
    if entry is None:
        click.echo(f"no key {key!r} in the {ctx.obj[0]} store", err=True)
        sys.exit(1)
    click.echo(_show(entry.value))


@store.command("watch")
@click.argument("prefix", default="")
@click.option("--count", type=int, help="Stop after this many events.")
@click.option("--timeout", type=float, help="Stop after this many seconds.")
@click.pass_context
def watch(ctx: click.Context, prefix: str, count: int | None, timeout: float | None) -> None:
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
        asyncio.run(_with_store(ctx, bounded))
