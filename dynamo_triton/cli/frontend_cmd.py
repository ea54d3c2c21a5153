"""``dyntriton frontend``: KServe gRPC + HTTP over every worker discovered in the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import click

from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.options import frontend_options, store_options
from dynamo_triton.runtime.launch import FrontendConfig, Shutdown, start_frontend

__all__ = ["frontend", "frontend_config"]

log = logging.getLogger("dyntriton.frontend")


def frontend_config(
    *,
    namespace: str,
    grpc_host: str,
    grpc_port: int,
    http_port: int,
    http_max_input_size: int,
    router: str,
    server_name: str,
    stream_window: int,
    max_message_size: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
) -> FrontendConfig:
    """FrontendConfig from the shared CLI options; TLS needs both cert and key."""
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together: give both or neither")
    if tls_client_ca and not tls_cert:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    grpc_options: dict[str, object] = {
        "max_message_bytes": max_message_size,
        "server_name": server_name,
        "stream_window": stream_window,
    }
    if tls_cert:
        grpc_options.update(tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca)
    return FrontendConfig(
        namespace=namespace,
        host=grpc_host,
        grpc_port=grpc_port,
        http_port=http_port,
        router=router,
        grpc_options=grpc_options,
        http_options={"server_name": server_name, "max_input_size": http_max_input_size},
    )


@click.command()
@store_options
@frontend_options
@click.pass_context
def frontend(ctx: click.Context, store_kv: str, **options: object) -> None:
    """Serve KServe v2 gRPC (and HTTP health/metrics) for every model live workers register."""
    plugins = plugins_from(ctx)
    config = frontend_config(**options)  # type: ignore[arg-type]
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_run(plugins, store_kv, config))


async def _run(plugins, store_kv: str, config: FrontendConfig) -> None:
    store = plugins.kv_store(store_kv)
    shutdown = Shutdown()
    try:
        stack = await start_frontend(plugins, store, config)
        click.echo(
            f"frontend: KServe gRPC on {config.host}:{stack.grpc.port}, HTTP on port "
            f"{stack.http.port if stack.http else '-'}, store {store_kv}, namespace {config.namespace}",
            err=True,
        )
        shutdown.started()
        signame = await shutdown.wait()
        log.info("%s received: stopping", signame)
        await stack.stop()
    finally:
        shutdown.close()
        await store.close()
