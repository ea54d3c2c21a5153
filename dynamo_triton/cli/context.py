"""Shared CLI plumbing: one plugin manager per invocation, kept on the click context."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from dynamo_triton.plugins import Plugins, make_plugin_manager

__all__ = ["plugins_from", "run_service"]

T = TypeVar("T")


def plugins_from(ctx: click.Context) -> Plugins:
    """The invocation's plugin manager, made on first use and shared by sub-commands."""
    root = ctx.find_root()
    meta = root.meta
    if "dyntriton.plugins" not in meta:
        meta["dyntriton.plugins"] = make_plugin_manager()
    return meta["dyntriton.plugins"]


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """Run a long-lived command's coroutine, on uvloop when it is installed.

    uvloop measured faster through ``serve`` (see the README's benchmark notes);
    ``DYNTRITON_EVENT_LOOP=asyncio`` selects the standard loop instead.
    """
    choice = os.environ.get("DYNTRITON_EVENT_LOOP", "uvloop").strip().lower()
    if choice not in {"uvloop", "asyncio"}:
        raise click.UsageError(f"DYNTRITON_EVENT_LOOP must be 'uvloop' or 'asyncio', got {choice!r}")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
