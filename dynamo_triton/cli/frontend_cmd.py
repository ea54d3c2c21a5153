"""``dyntriton frontend``: KServe gRPC + HTTP over every worker discovered in the store.

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
import os

import click

from dynamo_triton.cli.addresses import dial_address
from dynamo_triton.cli.children import forwarded_options, notify_ready, spawn, stop_children
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.exits import starting
from dynamo_triton.cli.options import (
    frontend_options,
    store_options,
    store_settings,
    transport_options,
    transport_settings,
)
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.admission import AdmissionSettings
from dynamo_triton.runtime.launch import FrontendConfig, FrontendStack, Shutdown, start_frontend
from dynamo_triton.tls import server_context

__all__ = [
    "FORWARDED",
    "check_tls_files",
    "extra_frontend_argv",
    "frontend",
    "frontend_config",
    "listeners",
    "share_token",
    "start_extra_frontends",
]

log = logging.getLogger("dyntriton.frontend")


def frontend_config(
    *,
    namespace: str,
    grpc_host: str,
    grpc_port: int,
    http_host: str,
    http_port: int,
    http_max_input_size: int,
    router: str,
    server_name: str,
    stream_window: int,
    max_message_size: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    http_tls: bool = True,
    reuse_port: bool = False,
    max_connection_age: float = 5.0,
    transport_tls_cert: str | None = None,
    transport_tls_key: str | None = None,
    transport_tls_ca: str | None = None,
    transport_token: str | None = None,
    transport_heartbeat: float = 1.0,
    grpc_restricted_protocol: tuple[str, ...] = (),
    http_restricted_api: tuple[str, ...] = (),
    max_inflight: int = 0,
    max_queue: int = 10_000,
) -> FrontendConfig:
    """FrontendConfig from the shared CLI options; TLS needs both cert and key.

    :param tls_cert: and ``tls_key``, ``tls_client_ca``: the frontend's TLS, for the gRPC port and,
        unless ``http_tls`` is false, the HTTP port (the same files: one certificate for the frontend).
    :param reuse_port: bind with ``SO_REUSEPORT`` so several frontend processes share the ports.
    :param max_connection_age: with ``reuse_port``: seconds a gRPC connection lives before its client is
        asked to reconnect, the bound on how long a draining frontend waits for its clients to move on
        (docs/operations.md); 0 turns it off.
    :param transport_tls_cert: and the other ``transport_*``: the request plane's settings (see
        :func:`~dynamo_triton.cli.options.transport_settings`).
    """
    transport = transport_settings(
        transport_tls_cert, transport_tls_key, transport_tls_ca, transport_token, transport_heartbeat
    )
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together: give both or neither")
    if tls_client_ca and not tls_cert:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    grpc_options: dict[str, object] = {
        "max_message_bytes": max_message_size,
        "server_name": server_name,
        "stream_window": stream_window,
        "reuse_port": reuse_port,
        "max_connection_age": max_connection_age if reuse_port else 0,
        "restricted": tuple(grpc_restricted_protocol),
    }
    http_options: dict[str, object] = {
        "server_name": server_name,
        "max_input_size": http_max_input_size,
        "reuse_port": reuse_port,
        "max_connection_age": max_connection_age if reuse_port else 0,
        "restricted": tuple(http_restricted_api),
    }
    if tls_cert:
        tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca}
        grpc_options.update(tls)
        if http_tls:
            http_options.update(tls)
    return FrontendConfig(
        namespace=namespace,
        host=grpc_host,
        grpc_port=grpc_port,
        http_host=http_host,
        http_port=http_port,
        router=router,
        grpc_options=grpc_options,
        http_options=http_options,
        transport=transport,
        admission=AdmissionSettings(max_inflight=max(max_inflight, 0), max_queue=max_queue, enabled=max_inflight >= 0),
    )


def share_token(token: str | None) -> None:
    """Hand the transport token to child processes through their environment, never their command line."""
    if token:
        os.environ["DYN_TRANSPORT_TOKEN"] = token


@click.command()
@store_options
@frontend_options
@transport_options
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Frontend processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each watching the store.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    envvar="DYN_REUSE_PORT",
    help="Bind the gRPC and HTTP ports with SO_REUSEPORT: a new frontend started the same way can take them "
    "over before this one drains on SIGTERM (rolling restarts). Set for --processes > 1.",
)
@click.option("--ready-fd", type=int, hidden=True, help="Write 'ready' to this inherited pipe once serving.")
@click.pass_context
def frontend(
    ctx: click.Context,
    store_kv: str,
    etcd_endpoints: str | None,
    file_kv_root: str | None,
    processes: int,
    reuse_port: bool,
    ready_fd: int | None,
    **options: object,
) -> None:
    """Serve KServe v2 gRPC and HTTP for every model live workers register.

    SIGTERM drains (stops accepting, finishes requests in flight) and exits 0; with --reuse-port a
    new frontend on the same ports takes over first. Exits 3 when it cannot start (store unreachable,
    a port taken).
    """
    plugins = plugins_from(ctx)
    config = frontend_config(**options, reuse_port=reuse_port or processes > 1)  # type: ignore[arg-type]
    share_token(config.transport.token)
    extra_argv = ["frontend", *forwarded_options(ctx, FORWARDED, {}), "--reuse-port"]
    store = store_settings(store_kv, etcd_endpoints, file_kv_root)
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_run(plugins, store_kv, store, config, processes - 1, extra_argv, ready_fd))


#: Options an extra frontend process receives from the command that starts it (serve or frontend).
FORWARDED = {
    "store_kv",
    "etcd_endpoints",
    "file_kv_root",
    "namespace",
    "grpc_host",
    "http_host",
    "http_max_input_size",
    "router",
    "server_name",
    "stream_window",
    "max_message_size",
    "max_connection_age",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "http_tls",
    "transport_tls_cert",
    "transport_tls_key",
    "transport_tls_ca",
    "transport_heartbeat",
    "grpc_restricted_protocol",
    "http_restricted_api",
    "max_inflight",
    "max_queue",
}  # the transport token goes through the environment (share_token), not the command line


def extra_frontend_argv(argv: list[str], stack: FrontendStack) -> list[str]:
    """``argv`` (a ``frontend ... --reuse-port`` command line) on the ports ``stack`` bound."""
    return [*argv, "--grpc-port", str(stack.grpc.port), "--http-port", str(stack.http.port if stack.http else -1)]


async def start_extra_frontends(count: int, argv: list[str], stack: FrontendStack) -> list[asyncio.subprocess.Process]:
    """Start ``count`` more frontend processes on the ports ``stack`` bound (with SO_REUSEPORT)."""
    return [await spawn(extra_frontend_argv(argv, stack)) for _ in range(count)]


def check_tls_files(config: FrontendConfig) -> None:
    """Load the frontend's TLS files before any port opens; a bad one raises a ConfigError naming it.

    The HTTP frontend would say so itself, but gRPC's own loader only says "Failed to bind".
    """
    options = config.grpc_options
    if options.get("tls_cert"):
        server_context(options["tls_cert"], options["tls_key"], options.get("tls_client_ca"))


def listeners(config: FrontendConfig, stack: FrontendStack) -> str:
    """Where a client reaches the frontend: ``KServe gRPC localhost:8787 (TLS), HTTP https://localhost:8000``."""
    where = f"KServe gRPC {dial_address(config.host, stack.grpc.port)}"
    if config.grpc_options.get("tls_cert"):
        where += " (TLS" + (", client certificates" if config.grpc_options.get("tls_client_ca") else "") + ")"
    if stack.http is not None:
        scheme = "https" if config.http_options.get("tls_cert") else "http"
        where += f", HTTP {scheme}://{dial_address(config.http_host or config.host, stack.http.port)}"
    return where


async def _run(
    plugins: Plugins,
    store_kv: str,
    store_options: dict[str, object],
    config: FrontendConfig,
    extra: int,
    extra_argv: list[str],
    ready_fd: int | None = None,
) -> None:
    with starting():
        check_tls_files(config)  # first: a wrong file is found without waiting on the store
        store = plugins.kv_store(store_kv, **store_options)
    shutdown = Shutdown()
    children: list[asyncio.subprocess.Process] = []
    try:
        with starting():
            stack = await start_frontend(plugins, store, config)
            children = await start_extra_frontends(extra, extra_argv, stack)
        click.echo(
            f"frontend: {listeners(config, stack)}; store {store_kv}, namespace {config.namespace}"
            + (f", {extra + 1} processes" if extra else ""),
            err=True,
        )
        notify_ready(ready_fd)
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
