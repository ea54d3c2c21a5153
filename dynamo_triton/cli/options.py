"""Click options shared by ``serve``, ``worker`` and ``frontend``: one source of truth for names, env vars, defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from dynamo_triton.runtime.routing import POLICIES

__all__ = ["backend_options", "frontend_options", "store_options", "worker_options"]

F = TypeVar("F", bound=Callable[..., Any])


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


store_options = _apply(
    [
        click.option(
            "--store-kv",
            envvar="DYN_STORE_KV",
            default="file",
            show_envvar=True,
            help="Key-value store for discovery (see `dyntriton plugins list`): file, etcd, mem, ...",
        ),
        click.option(
            "--namespace",
            envvar="DYN_NAMESPACE",
            default="dynamo",
            show_envvar=True,
            help="Discovery namespace; frontends see only workers of the same namespace.",
        ),
    ]
)

backend_options = _apply(
    [
        click.option("--backend", default="triton", help="Backend plugin that runs the models."),
        click.option(
            "--model",
            "--model-name",
            "models",
            multiple=True,
            help="Model to load (repeatable). Default: every model in the repository.",
        ),
        click.option(
            "--model-repository",
            type=click.Path(file_okay=False),
            default="model_repo",
            help="Triton model repository (folders with config.pbtxt and version dirs).",
        ),
        click.option("--backend-directory", type=click.Path(file_okay=False), help="Triton backends folder."),
        click.option("--log-verbose", type=int, default=0, help="Triton log verbosity (0 = quiet)."),
        click.option(
            "--triton-home",
            envvar="TRITON_HOME",
            show_envvar=True,
            type=click.Path(file_okay=False),
            help="Triton installation to embed (default: /opt/tritonserver, then the nvidia-pytriton wheel).",
        ),
    ]
)

worker_options = _apply(
    [
        click.option("--transport", default="tcp", help="Request plane between frontend and workers."),
        click.option("--host", default="127.0.0.1", help="Interface the worker's transport server binds."),
        click.option("--lease-ttl", type=float, default=10.0, help="Seconds before a dead worker is forgotten."),
        click.option(
            "--system-port",
            envvar="DYN_SYSTEM_PORT",
            type=int,
            default=8081,
            show_envvar=True,
            help="Worker HTTP port for /health, /live and /metrics (0 = any free port).",
        ),
    ]
)

frontend_options = _apply(
    [
        click.option("--grpc-host", default="0.0.0.0", help="Interface the frontends bind."),
        click.option(
            "--grpc-port",
            envvar="DYN_GRPC_PORT",
            type=int,
            default=8787,
            show_envvar=True,
            help="KServe gRPC port.",
        ),
        click.option(
            "--http-port",
            envvar="DYN_HTTP_PORT",
            type=int,
            default=8000,
            show_envvar=True,
            help="HTTP port: KServe v2 REST, /health, /live, /metrics.",
        ),
        click.option(
            "--http-max-input-size",
            type=click.IntRange(min=1),
            default=64 * 1024 * 1024,
            show_default=True,
            help="Largest HTTP request body accepted, in bytes, after decompression (413 beyond it).",
        ),
        click.option("--router", type=click.Choice(sorted(POLICIES)), default="round-robin", help="Router policy."),
        click.option(
            "--server-name",
            envvar="DYN_SERVER_NAME",
            default="triton",
            show_default=True,
            show_envvar=True,
            help="Name ServerMetadata reports (Triton's clients expect 'triton').",
        ),
        click.option(
            "--stream-window",
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Requests one ModelStreamInfer stream may have running or unsent before the frontend stops reading.",
        ),
        click.option(
            "--max-message-size",
            type=int,
            default=256 * 1024 * 1024,
            help="Largest gRPC message accepted or sent, in bytes.",
        ),
        click.option("--tls-cert", type=click.Path(dir_okay=False), help="TLS certificate (PEM) for gRPC."),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="TLS private key (PEM) for gRPC."),
        click.option(
            "--tls-client-ca",
            type=click.Path(dir_okay=False),
            help="CA (PEM) that client certificates must chain to; requires client auth.",
        ),
    ]
)
