"""The root ``dyntriton`` group: core commands by module path, plugin commands by registry.

Commands are imported only when run, so ``dyntriton --help`` stays fast and a
plugin with a broken command module cannot break any other command.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import os
import sys
from typing import Any

import click

from dynamo_triton.cli.context import plugins_from
from dynamo_triton.cli.exits import exit_code_of
from dynamo_triton.errors import DyntritonError
from dynamo_triton.malloc import tune_malloc

__all__ = ["core_command", "main"]

#: Core commands: name -> ("module:attribute", one-line summary for --help).
CORE_COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("dynamo_triton.cli.plugins_cmd:plugins", "List installed plugins and what they provide."),
    "store": ("dynamo_triton.cli.store_cmd:store", "Inspect and watch a KV store."),
    "serve": ("dynamo_triton.cli.serve_cmd:serve", "Run a frontend and workers in one command."),
    "worker": ("dynamo_triton.cli.worker_cmd:worker", "Run a worker: load models, register them, serve requests."),
    "frontend": ("dynamo_triton.cli.frontend_cmd:frontend", "Run the KServe frontend over discovered workers."),
    "infer": ("dynamo_triton.cli.infer_cmd:infer", "Send one inference request to a KServe endpoint."),
    "model": ("dynamo_triton.cli.model_cmd:model", "Load, unload and list models (model repository extension)."),
    "status": ("dynamo_triton.cli.status_cmd:status", "Show models, their workers' state and load, and the frontends."),
    "top": ("dynamo_triton.cli.top_cmd:top", "Show the cluster's load live (q quits)."),
}


def _load(spec: str) -> click.Command:
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def core_command(name: str, plugins: Any) -> click.Command:
    """The core command ``name`` with the options of ``plugins`` (what ``dyntriton NAME`` runs)."""
    from dynamo_triton.cli.composition import with_plugin_options

    return with_plugin_options(_load(CORE_COMMANDS[name][0]), plugins)


class LazyGroup(click.Group):
    """A group that lists commands from summaries and imports a command only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(CORE_COMMANDS)
        names.update(item.name for item in plugins_from(ctx).commands())
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in CORE_COMMANDS:
            spec = CORE_COMMANDS[cmd_name][0]
            try:
                command = _load(spec)
            except ModuleNotFoundError as exc:
                if not exc.name or not exc.name.startswith("dynamo_triton.cli."):
                    raise
                return None
            if getattr(command, "dyntriton_kinds", None) or isinstance(command, click.Group):
                from dynamo_triton.cli.composition import with_plugin_options

                return with_plugin_options(command, plugins_from(ctx))
            return command
        for item in plugins_from(ctx).commands():
            if item.name == cmd_name:
                return _plugin_command(item)
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        summaries = {name: summary for name, (_, summary) in CORE_COMMANDS.items()}
        for item in plugins_from(ctx).commands():
            summaries.setdefault(item.name, item.summary or f"(from plugin {item.provider})")
        rows = [(name, summaries[name]) for name in sorted(summaries)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _plugin_command(item: Any) -> click.Command:
    """Load a plugin's command; a failure becomes a command that explains it."""
    try:
        command = item.obj()
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"

        @click.command(name=item.name, help=f"(broken: plugin {item.provider!r} failed to load it)")
        def broken() -> None:
            raise click.ClickException(f"command {item.name!r} from plugin {item.provider!r} failed to load: {reason}")

        return broken
    if not isinstance(command, click.Command):
        raise click.ClickException(
            f"plugin {item.provider!r} registered {item.name!r} but its loader returned {command!r}"
        )
    return command


def _configure_process(argv: list[str] | None = None) -> None:
    # A crash inside Triton or a C extension (SIGSEGV, SIGABRT...) prints every thread's Python
    # stack to stderr before the process dies: the one clue an operator gets from the log.
    faulthandler.enable()
    # Triton's python backend forks a stub process per model instance; with grpc's fork handlers
    # enabled, a process that runs a grpc server (serve --in-process) aborts in that fork.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    # gRPC's core logs (e.g. an add_port.cc E-line before our own "cannot listen" error) are read
    # from GRPC_VERBOSITY when grpc is imported: decide before any command imports it. Children
    # inherit the choice; a GRPC_VERBOSITY the user set wins.
    verbose = _log_verbose(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if verbose > 0 else "NONE")
    tune_malloc()  # 1 MiB tensors without heap grow/trim page faults, here and in children


def _log_verbose(argv: list[str]) -> int:
    """The ``--log-verbose`` value on the command line (0 when absent or not a number)."""
    for index, arg in enumerate(argv):
        value = None
        if arg == "--log-verbose" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--log-verbose="):
            value = arg.partition("=")[2]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _configure_logging() -> None:
    level = os.environ.get("DYN_LOG", "info").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="dynamo-triton", prog_name="dyntriton")
def cli() -> None:
    """dyntriton: Triton models behind a distributed, self-discovering KServe v2 frontend."""
    _configure_logging()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI; dyntriton errors print as one line plus a hint."""
    _configure_process(argv)
    try:
        cli.main(args=argv, prog_name="dyntriton", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except DyntritonError as exc:
        click.secho(f"Error: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(f"Hint: {exc.hint}", err=True)
        sys.exit(exit_code_of(exc))
    except KeyboardInterrupt:
        sys.exit(130)
