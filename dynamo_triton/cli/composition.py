"""Plugins' options on the core's commands, ``--help`` in panels, and settings built once from click's values.

A core command says which kinds of plugins it composes (``uses=("kv-store", "transport")``);
when the command is looked up, :func:`with_plugin_options` gives it a copy of itself carrying
the options of every plugin of those kinds (the settings classes they registered, plus the
kind's common settings). Only the selected plugin's settings are built, by
:func:`plugin_settings`. Child processes get the same values through
:func:`child_argv`: the parent's values of every option the child command has, rendered from
the option table (no per-option list to keep in step).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import click

from dynamo_triton.backend import BackendSettings
from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import FrontendSettings
from dynamo_triton.plugins import Plugins
from dynamo_triton.settings import build, click_options, render_argv
from dynamo_triton.transport import TransportSettings

__all__ = [
    "PanelCommand",
    "PanelGroup",
    "child_argv",
    "plugin_settings",
    "uses",
    "with_plugin_options",
]

#: The settings every plugin of a kind shares, declared by the core (shown even with no plugin of the kind).
COMMON = {"transport": TransportSettings, "backend": BackendSettings, "frontend": FrontendSettings}

#: Core options naming a plugin, by the kind they choose from: their default is the plugin of that kind
#: registered with the trait ``default`` (file, tcp, triton, least-outstanding as shipped).
CHOICES = {"store_kv": "kv-store", "transport": "transport", "backend": "backend", "router": "router"}

#: The panel of options a command declares without one.
GENERAL = "Options"

#: Panels shown first, in this order; plugin panels follow, alphabetically, then the command's own.
CORE_PANELS = (
    "Store",
    "Backend (every backend)",
    "Worker",
    "Request plane (every transport)",
    "Frontend (every protocol)",
)


def _format_panels(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    panels: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            panels.setdefault(getattr(param, "dyntriton_panel", GENERAL), []).append(record)
    order = [name for name in CORE_PANELS if name in panels]
    order += sorted(name for name in panels if name not in CORE_PANELS and name != GENERAL)
    order += [GENERAL] if GENERAL in panels else []
    for name in order:
        with formatter.section(name):
            formatter.write_dl(panels[name])


class PanelCommand(click.Command):
    """A command whose ``--help`` lists options in panels: the core's, one per plugin, then its own."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_panels(self, ctx, formatter)


class PanelGroup(click.Group):
    """:class:`PanelCommand`'s help for a group (its sub-commands listed after the panels)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _format_panels(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def uses(*kinds: str, override: bool = False) -> Any:
    """Mark a core command as composing plugins of ``kinds``; ``override``: the sub-command flavour
    (options without defaults or env vars, overriding the group's when given)."""

    def mark(command: click.Command) -> click.Command:
        command.dyntriton_kinds = kinds  # type: ignore[attr-defined]
        command.dyntriton_override = override  # type: ignore[attr-defined]
        return command

    return mark


def _classes(plugins: Plugins, kinds: Sequence[str]) -> list[type]:
    classes: list[type] = []
    for kind in kinds:
        if kind in COMMON:
            classes.append(COMMON[kind])
        classes.extend(plugins.settings_classes(kind))
    return classes


def with_plugin_options(command: click.Command, plugins: Plugins) -> click.Command:
    """A copy of ``command`` (and of its sub-commands) with the options of the plugins of the kinds it uses.

    The module-level command is never changed: each invocation (each plugin manager) gets its own copy.
    :raises click.ClickException: two plugins declare one option two ways.
    """
    kinds = getattr(command, "dyntriton_kinds", ())
    subcommands = getattr(command, "commands", None)
    if not kinds and not subcommands:
        return command
    command = copy.copy(command)
    command.params = [_with_default(param, plugins) for param in command.params]
    if kinds:
        taken = {param.name for param in command.params}
        try:
            options = click_options(_classes(plugins, kinds), override=getattr(command, "dyntriton_override", False))
        except ConfigError as exc:
            raise click.ClickException(f"{exc.message} ({exc.hint})") from exc
        command.params = [*command.params, *(option for option in options if option.name not in taken)]
    if isinstance(command, click.Group):
        command.commands = {name: with_plugin_options(sub, plugins) for name, sub in command.commands.items()}
    return command


def _with_default(param: click.Parameter, plugins: Plugins) -> click.Parameter:
    """``param`` (a copy: the module-level one stays as it is) defaulting to its kind's default plugin."""
    kind = CHOICES.get(param.name or "")
    if kind is None or param.default is not None or param.callback is None:  # overrides keep None
        return param
    defaults = plugins.names_with_trait(kind, "default")
    if not defaults:
        return param
    param = copy.copy(param)
    param.default = defaults[0]
    return param


def plugin_settings(plugins: Plugins, kind: str, name: str, values: Mapping[str, Any], /, **overrides: Any) -> Any:
    """The settings of plugin ``name`` from click's ``values``: its registered class, else the kind's common
    settings (None for a kind without them)."""
    cls = plugins.settings_class(kind, name) or COMMON.get(kind)
    return None if cls is None else build(cls, values, **overrides)


def child_argv(
    ctx: click.Context,
    child: click.Command,
    overrides: Mapping[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The options of ``child`` (a command with plugin options) carrying this invocation's values.

    Every option the child has and this command has too is rendered, whatever plugin declared it;
    ``overrides`` replace values by parameter name; secrets go into ``env`` (see
    :func:`dynamo_triton.settings.render_argv`).
    """
    values = {**ctx.params, **(overrides or {})}
    return render_argv(child.params, values, env=env)
