"""``dyntriton infer``: one request to any KServe v2 gRPC endpoint.

Reads the model's metadata, fills each input with random data of the right
datatype (``-1`` dims take ``--shape``), sends it and prints the outputs. With
``--verify`` (the default for identity-like models) it checks every output holds
the same bytes and shape as the input of the same position.

Tensors are encoded and decoded with the process's dtype table
(``Plugins.dtype_table()``), so ``--datatype`` can name a plugin datatype, e.g.
``--datatype FP8E4M3`` for a model input of its carrier type ``UINT8``. The request
is built with the KServe protos and sent on the raw gRPC stub: tritonclient's
``InferInput`` accepts only the numpy dtypes it knows.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import click
import numpy as np

from dynamo_triton.cli.context import plugins_from
from dynamo_triton.dtypes import DType, DTypeTable
from dynamo_triton.errors import DyntritonError, UnknownNameError
from dynamo_triton.tensors import array_from_raw, array_to_raw, contents_to_raw

__all__ = ["default_url", "infer", "unreachable"]

_MAX_MESSAGE = 2**31 - 1


def _fill(row: DType, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    if row.itemsize == 0:
        data = np.array([f"item-{i}".encode() for i in range(count)], dtype=np.object_)
    elif row.numpy == np.dtype(np.bool_):
        data = rng.integers(0, 2, count).astype(np.bool_)
    elif np.issubdtype(row.numpy, np.integer):
        info = np.iinfo(row.numpy)
        data = rng.integers(max(info.min, -1000), min(info.max, 1000), count).astype(row.numpy)
    else:  # floats, including plugin floats (ml_dtypes) numpy casts to
        data = rng.standard_normal(count).astype(row.numpy)
    return data.reshape(shape)


def _resolve_shape(name: str, model_shape: list[int], given: tuple[int, ...]) -> list[int]:
    """The shape to send for input ``name``: ``given`` (``--shape``) where the model has ``-1``, the
    model's own dims elsewhere (``-1`` as 1 without ``--shape``).

    :raises click.BadParameter: ``given`` has another number of dimensions than the input, or
        differs from a dimension the model fixes (the request would be refused, or mean another shape).
    """
    if not given:
        return [1 if m == -1 else m for m in model_shape]
    if len(given) != len(model_shape):
        example = " ".join(str(1 if m == -1 else m) for m in model_shape[:-1]) + " 5" if model_shape else ""
        raise click.BadParameter(
            f"--shape {' '.join(map(str, given))} has {len(given)} dimension(s), but input '{name}' has "
            f"{len(model_shape)} ({list(model_shape)}, -1 = any): give one number per dimension"
            + (f", e.g. --shape {example.strip()}" if example.strip() else ""),
            param_hint="--shape",
        )
    for index, (m, g) in enumerate(zip(model_shape, given, strict=True)):
        if m != -1 and m != g:
            raise click.BadParameter(
                f"--shape {' '.join(map(str, given))}: dimension {index} of input '{name}' is fixed at {m}, got {g}",
                param_hint="--shape",
            )
    return list(given)


def _row(table: DTypeTable, datatype: str) -> DType:
    try:
        return table.by_kserve(datatype)
    except UnknownNameError as exc:
        raise click.BadParameter(
            f"{exc.message}; a plugin datatype needs its plugin loaded here too (DYNTRITON_PLUGINS=module)",
            param_hint="--datatype",
        ) from None


def _output_raw(response: Any, index: int, table: DTypeTable) -> bytes:
    if response.raw_output_contents:
        return bytes(response.raw_output_contents[index])
    tensor = response.outputs[index]
    return contents_to_raw(tensor.contents, tensor.datatype, table=table)


def default_url(url: str | None, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The endpoint to call and where it came from: ``--url``/``DYN_GRPC_URL``, else ``localhost:$DYN_GRPC_PORT``."""
    if url:
        return url, "--url / DYN_GRPC_URL"
    env = os.environ if env is None else env
    port = env.get("DYN_GRPC_PORT", "").strip()
    if port:
        return f"localhost:{port}", "DYN_GRPC_PORT"
    return "localhost:8787", "the default port 8787"


def unreachable(url: str, source: str, details: str) -> DyntritonError:
    """The error for an endpoint that does not answer: which address, from where, and what to do."""
    return DyntritonError(
        f"cannot reach a KServe gRPC endpoint at {url} (from {source}): {details}",
        hint="start one (`dyntriton serve`), or give its address with --url HOST:PORT (DYN_GRPC_URL); "
        "without --url the port comes from DYN_GRPC_PORT",
        status="UNAVAILABLE",
    )


def _answers(stub: Any, timeout: float) -> bool:
    """Whether the endpoint answers at all (an UNAVAILABLE from a live server is its answer, e.g. a
    model with no live instance, not an unreachable endpoint)."""
    import grpc
    from tritonclient.grpc import service_pb2

    try:
        stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=min(timeout, 5.0))
    except grpc.RpcError:
        return False
    return True


def _show(array: np.ndarray) -> str:
    return np.array2string(array, threshold=64, separator=", ").replace("\n", "")


@click.command()
@click.option(
    "--url",
    envvar="DYN_GRPC_URL",
    show_envvar=True,
    help="KServe gRPC endpoint host:port. Default: localhost:$DYN_GRPC_PORT (8787), the port serve uses.",
)
@click.option("--model", "model_name", default="identity", help="Model to call.")
@click.option(
    "--shape",
    "shape_flag",
    is_flag=True,
    help="Marks the numbers that follow as the shape for -1 dims, e.g. --shape 1 5.",
)
@click.argument("shape_dims", nargs=-1, type=int)
@click.option(
    "--datatype",
    default=None,
    help="Send every input as this KServe datatype instead of the model's, e.g. a plugin datatype "
    "carried by the model's type (FP8E4M3 for UINT8).",
)
@click.option("--seed", type=int, default=0, help="Random seed for the input data.")
@click.option("--verify/--no-verify", default=None, help="Check outputs equal inputs, byte for byte (identity models).")
@click.option("--timeout", type=float, default=30.0, help="Client deadline in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
@click.pass_context
def infer(
    ctx: click.Context,
    url: str | None,
    model_name: str,
    shape_flag: bool,
    shape_dims: tuple[int, ...],
    datatype: str | None,
    seed: int,
    verify: bool | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Send one request to a model (e.g. `dyntriton infer --model identity --shape 1 5`)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    url, source = default_url(url)
    table = plugins_from(ctx).dtype_table()
    if datatype is not None:
        _row(table, datatype)
    options = [("grpc.max_send_message_length", _MAX_MESSAGE), ("grpc.max_receive_message_length", _MAX_MESSAGE)]
    channel = grpc.insecure_channel(url, options=options)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        metadata = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model_name), timeout=timeout)
        rng = np.random.default_rng(seed)
        request = service_pb2.ModelInferRequest(model_name=model_name)
        arrays: list[np.ndarray] = []
        for tensor in metadata.inputs:
            sent = datatype or tensor.datatype
            array = _fill(_row(table, sent), _resolve_shape(tensor.name, list(tensor.shape), shape_dims), rng)
            request.inputs.add(name=tensor.name, datatype=sent, shape=list(array.shape))
            request.raw_input_contents.append(array_to_raw(array, sent, table=table))
            arrays.append(array)
        for tensor in metadata.outputs:
            request.outputs.add(name=tensor.name)
        response = stub.ModelInfer(request, timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE and not _answers(stub, timeout):
            raise unreachable(url, source, exc.details() or "") from None
        raise click.ClickException(f"{exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()
    results: dict[str, tuple[str, np.ndarray, bytes]] = {}
    for index, tensor in enumerate(response.outputs):
        raw = _output_raw(response, index, table)
        results[tensor.name] = (tensor.datatype, array_from_raw(raw, tensor.datatype, tensor.shape, table=table), raw)
    if verify is None:
        verify = model_name.startswith("identity")
    mismatched = []
    if verify:
        for position, tensor in enumerate(metadata.outputs):
            got = results.get(tensor.name)
            if (
                got is None
                or position >= len(arrays)
                or list(got[1].shape) != list(arrays[position].shape)
                or got[2] != request.raw_input_contents[position]
            ):
                mismatched.append(tensor.name)
    if as_json:
        summary = {
            "model": model_name,
            "inputs": {t.name: t.datatype for t in request.inputs},
            "outputs": {
                name: {"shape": list(value.shape), "dtype": str(value.dtype), "datatype": dt}
                for name, (dt, value, _) in results.items()
            },
            "verified": verify and not mismatched,
            "mismatched": mismatched,
        }
        click.echo(json.dumps(summary))
    else:
        for array, tensor in zip(arrays, request.inputs, strict=True):
            click.echo(f"input  {tensor.name} {tensor.datatype} {list(array.shape)}: {_show(array)}")
        for name, (dt, value, _) in results.items():
            click.echo(f"output {name} {dt} {list(value.shape)}: {_show(value)}")
        if verify:
            click.echo(
                "verified: outputs equal inputs, byte for byte"
                if not mismatched
                else f"MISMATCH in {', '.join(mismatched)}"
            )
    if mismatched:
        sys.exit(1)
