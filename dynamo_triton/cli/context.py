"""Shared CLI plumbing: one plugin manager per invocation, kept on the click context."""

from __future__ import annotations

import click

from dynamo_triton.plugins import Plugins, make_plugin_manager

__all__ = ["plugins_from"]


def plugins_from(ctx: click.Context) -> Plugins:
    """The invocation's plugin manager, made on first use and shared by sub-commands."""
    root = ctx.find_root()
    meta = root.meta
    if "dyntriton.plugins" not in meta:
        meta["dyntriton.plugins"] = make_plugin_manager()
    return meta["dyntriton.plugins"]
