"""``dyntriton frontend``: the frontend plugins (KServe gRPC + HTTP by default) over every worker in the store.

SIGTERM drains: the ports stop accepting, requests in flight finish, then the process
exits 0. Started with ``--reuse-port``, a frontend shares its ports (``SO_REUSEPORT``) with
any other frontend started the same way, so a rolling restart loses no request: start
the new process on the same ports, wait for its start line, then SIGTERM the old one; its
clients move to the new one within ``--max-connection-age`` before it stops (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import click

from dynamo_triton.cli.addresses import dial_address
from dynamo_triton.cli.children import notify_ready, spawn, stop_children
from dynamo_triton.cli.composition import PanelCommand, child_argv, plugin_settings, uses
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.exits import starting
from dynamo_triton.cli.options import frontend_options, store_options, trace_config, trace_options
from dynamo_triton.cli.worker_cmd import store_from, transport_settings_from
from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import FrontendSettings
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.admission import AdmissionSettings
from dynamo_triton.runtime.launch import FrontendConfig, FrontendStack, Shutdown, start_frontend
from dynamo_triton.settings import declared_options
from dynamo_triton.tls import server_context

__all__ = [
    "check_tls_files",
    "extra_frontend_argv",
    "frontend",
    "frontend_config",
    "frontend_names",
    "listeners",
    "start_extra_frontends",
]

log = logging.getLogger("dyntriton.frontend")


def frontend_names(plugins: Plugins, given: tuple[str, ...]) -> tuple[str, ...]:
    """``--frontend`` as given (each once, in order), else the frontends registered as defaults."""
    names = tuple(dict.fromkeys(given)) or tuple(plugins.names_with_trait("frontend", "default"))
    for name in names:
        plugins.get("frontend", name)  # an unknown name: the error lists the known ones
    return names


def frontend_config(plugins: Plugins, values: Mapping[str, Any], *, reuse_port: bool = False) -> FrontendConfig:
    """FrontendConfig from click's ``values``: each chosen frontend's settings, the router, the transports.

    :param reuse_port: bind with ``SO_REUSEPORT`` so several frontend processes share the ports.
    :raises click.UsageError: TLS files that do not go together.
    """
    frontends = []
    for name in frontend_names(plugins, tuple(values.get("frontends_list") or ())):
        settings = plugin_settings(plugins, "frontend", name, values, reuse_port=reuse_port)
        try:
            settings.check()
        except ConfigError as exc:
            raise click.UsageError(exc.message) from None
        frontends.append((name, settings))
    transports = {name: transport_settings_from(plugins, name, values) for name in plugins.names("transport")}
    max_inflight = values["max_inflight"]
    return FrontendConfig(
        namespace=values["namespace"],
        frontends=tuple(frontends),
        router=values["router"],
        router_settings=plugins.build_settings("router", values["router"], values),
        transport=transport_settings_from(plugins, None, values),
        transports=transports,
        admission=AdmissionSettings(
            max_inflight=max(max_inflight, 0), max_queue=values["max_queue"], enabled=max_inflight >= 0
        ),
        trace=trace_config(values),
    )


@uses("kv-store", "transport", "frontend", "router")
@click.command(cls=PanelCommand)
@store_options
@frontend_options
@trace_options
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Frontend processes sharing the ports (SO_REUSEPORT), each watching the store.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    envvar="DYN_REUSE_PORT",
    help="Bind the frontends' ports with SO_REUSEPORT: a new frontend started the same way can take them "
    "over before this one drains on SIGTERM (rolling restarts). Set for --processes > 1.",
)
@click.option("--ready-fd", type=int, hidden=True, help="Write 'ready' to this inherited pipe once serving.")
@click.pass_context
def frontend(ctx: click.Context, **values: Any) -> None:
    """Serve the frontends (KServe v2 gRPC and HTTP by default) for every model live workers register.

    SIGTERM drains (stops accepting, finishes requests in flight) and exits 0; with --reuse-port a
    new frontend on the same ports takes over first. Exits 3 when it cannot start (store unreachable,
    a port taken).
    """
    plugins = plugins_from(ctx)
    processes = values["processes"]
    config = frontend_config(plugins, values, reuse_port=values["reuse_port"] or processes > 1)
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_run(plugins, ctx, values, config, processes - 1))


def extra_frontend_argv(ctx: click.Context, plugins: Plugins, stack: FrontendStack) -> tuple[list[str], dict[str, str]]:
    """The ``frontend ... --reuse-port`` command line (and secret env vars) of another process on the ports
    ``stack`` bound: this invocation's values of every option ``frontend`` has, each port option set
    to its frontend's bound port."""
    from dynamo_triton.cli.main import core_command

    ports: dict[str, Any] = {}
    for name, running in stack.frontends:
        cls = plugins.settings_class("frontend", name)
        for declared in declared_options(cls) if cls is not None else []:
            if declared.field_name == "port":
                ports[declared.spec.param_name] = running.port
    env: dict[str, str] = {}
    argv = child_argv(ctx, core_command("frontend", plugins), ports, env=env)
    return ["frontend", *argv, "--reuse-port"], env


async def start_extra_frontends(
    count: int, argv: list[str], env: Mapping[str, str]
) -> list[asyncio.subprocess.Process]:
    """Start ``count`` more frontend processes (``argv`` from :func:`extra_frontend_argv`)."""
    return [await spawn(argv, env=env) for _ in range(count)]


def check_tls_files(config: FrontendConfig) -> None:
    """Load the frontends' TLS files before any port opens; a bad one raises a ConfigError naming it.

    The HTTP frontend would say so itself, but gRPC's own loader only says "Failed to bind".
    """
    for _, settings in config.frontends:
        if settings.tls_cert and settings.tls_key:
            server_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            return


def listeners(config: FrontendConfig, stack: FrontendStack) -> str:
    """Where a client reaches the frontends: ``KServe gRPC 127.0.0.1:8787 (TLS), HTTP https://127.0.0.1:8000``."""
    settings: dict[str, FrontendSettings] = dict(config.frontends)
    parts = []
    for name, running in stack.frontends:
        own = settings[name]
        parts.append(own.listener(dial_address(own.host, running.port)))
    return ", ".join(parts)


async def _run(
    plugins: Plugins,
    ctx: click.Context,
    values: dict[str, Any],
    config: FrontendConfig,
    extra: int,
) -> None:
    store_kv = values["store_kv"]
    with starting():
        check_tls_files(config)  # first: a wrong file is found without waiting on the store
        store = store_from(plugins, values)
    shutdown = Shutdown()
    children: list[asyncio.subprocess.Process] = []
    try:
        with starting():
            stack = await start_frontend(plugins, store, config)
            if extra:
                argv, env = extra_frontend_argv(ctx, plugins, stack)
                children = await start_extra_frontends(extra, argv, env)
        click.echo(
            f"frontend: {listeners(config, stack)}; store {store_kv}, namespace {config.namespace}"
            + (f", {extra + 1} processes" if extra else ""),
            err=True,
        )
        notify_ready(values.get("ready_fd"))
        shutdown.started()
        signame = await shutdown.wait()
        log.info("%s received: draining (the ports stop accepting; requests in flight finish)", signame)
        await stop_children(children)
        await stack.stop()
        log.info("drained: exiting")
    finally:
        shutdown.close()
        await stop_children(children)
        await store.close()
