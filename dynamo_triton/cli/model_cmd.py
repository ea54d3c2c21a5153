"""``dyntriton model load|unload|ls``: Triton's model repository extension against any KServe gRPC endpoint.

Through a dyntriton frontend the requests reach every worker started with ``--model-control
explicit`` (docs/model-control.md); against Triton itself they do what ``tritonclient``'s
``load_model`` / ``unload_model`` / ``get_model_repository_index`` do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dynamo_triton.cli.infer_cmd import default_url, unreachable

__all__ = ["model"]

_URL = click.option(
    "--url",
    envvar="DYN_GRPC_URL",
    show_envvar=True,
    help="KServe gRPC endpoint host:port. Default: localhost:$DYN_GRPC_PORT (8787), the port serve uses.",
)
_TIMEOUT = click.option(
    "--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the workers."
)


def _call(url: str | None, method: str, request: Any, timeout: float) -> Any:
    """One RPC; an endpoint that does not answer and an error answer are one line each."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    address, source = default_url(url)
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=min(timeout, 10.0))
        except grpc.FutureTimeoutError:
            raise unreachable(address, source, "no answer within 10 s") from None
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None


@click.group()
def model() -> None:
    """Load, unload and list models (Triton's model repository extension)."""


@model.command("ls")
@_URL
@click.option("--ready", is_flag=True, help="Only models ready for inference.")
@click.option("--json", "as_json", is_flag=True, help="Print the index as JSON.")
def ls(url: str | None, ready: bool, as_json: bool) -> None:
    """Every model of the repositories, with its version, state and the reason for it."""
    from tritonclient.grpc import service_pb2

    answer = _call(url, "RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=ready), 30.0)
    rows = [(m.name, m.version, m.state, m.reason) for m in answer.models]
    if as_json:
        keys = ("name", "version", "state", "reason")
        click.echo(json.dumps([{k: v for k, v in zip(keys, row, strict=True) if v} for row in rows]))
        return
    if not rows:
        click.echo("no models", err=True)
        return
    widths = [max(len(str(row[i])) for row in [("MODEL", "VERSION", "STATE", "REASON"), *rows]) for i in range(3)]
    for row in [("MODEL", "VERSION", "STATE", "REASON"), *rows]:
        click.echo(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )


@model.command()
@_URL
@click.argument("name")
@click.option("--config", help="A ModelConfig as JSON, loaded instead of the repository's config.pbtxt.")
@click.option("--config-file", type=click.Path(dir_okay=False, exists=True), help="The same, read from a JSON file.")
@click.option(
    "--file",
    "files",
    multiple=True,
    metavar="VERSION/NAME=PATH",
    help="A file of an override model directory, e.g. 1/model.onnx=./model.onnx (repeatable; needs a config).",
)
@_TIMEOUT
def load(
    url: str | None, name: str, config: str | None, config_file: str | None, files: tuple[str, ...], timeout: float
) -> None:
    """Load or reload NAME; returns once it is ready (on at least one worker)."""
    from tritonclient.grpc import service_pb2

    if config and config_file:
        raise click.UsageError("give --config or --config-file, not both")
    request = service_pb2.RepositoryModelLoadRequest(model_name=name)
    if config_file:
        config = Path(config_file).read_text()
    if config is not None:
        request.parameters["config"].string_param = config
    for item in files:
        target, sep, local = item.partition("=")
        if not sep or not target or not local:
            raise click.BadParameter(f"expected VERSION/NAME=PATH, got {item!r}", param_hint="--file")
        try:
            request.parameters[f"file:{target}"].bytes_param = Path(local).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {local}: {exc.strerror}", param_hint="--file") from None
    _call(url, "RepositoryModelLoad", request, timeout)
    click.echo(f"model '{name}' loaded")


@model.command()
@_URL
@click.argument("name")
@_TIMEOUT
def unload(url: str | None, name: str, timeout: float) -> None:
    """Unload NAME everywhere; returns once no worker serves it."""
    from tritonclient.grpc import service_pb2

    _call(url, "RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name=name), timeout)
    click.echo(f"model '{name}' unloaded")
