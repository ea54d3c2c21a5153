"""``dyntriton infer``: one request to any KServe v2 gRPC endpoint, with tritonclient.

Reads the model's metadata, fills each input with random data of the right
datatype (``-1`` dims take ``--shape``), sends it and prints the outputs. With
``--verify`` (the default for identity-like models) it checks every output
equals the input of the same position.
"""

from __future__ import annotations

import json
import sys

import click
import numpy as np

from dynamo_triton.dtypes import default_table

__all__ = ["infer"]


def _fill(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = default_table().by_kserve(datatype)
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        data = np.array([f"item-{i}".encode() for i in range(count)], dtype=np.object_)
    elif datatype == "BOOL":
        data = rng.integers(0, 2, count).astype(np.bool_)
    elif np.issubdtype(np.dtype(dtype.numpy), np.integer):
        info = np.iinfo(np.dtype(dtype.numpy))
        data = rng.integers(max(info.min, -1000), min(info.max, 1000), count).astype(dtype.numpy)
    else:
        data = rng.standard_normal(count).astype(dtype.numpy)
    return data.reshape(shape)


def _resolve_shape(model_shape: list[int], given: tuple[int, ...]) -> list[int]:
    if given and len(given) == len(model_shape):
        return [g if m == -1 else m for m, g in zip(model_shape, given, strict=True)]
    if given and -1 in model_shape and len(given) == 1:
        return [given[0] if m == -1 else m for m in model_shape]
    if given:
        return list(given)
    return [1 if m == -1 else m for m in model_shape]


@click.command()
@click.option("--url", default="localhost:8787", envvar="DYN_GRPC_URL", help="KServe gRPC endpoint host:port.")
@click.option("--model", "model_name", default="identity", help="Model to call.")
@click.option(
    "--shape",
    "shape_flag",
    is_flag=True,
    help="Marks the numbers that follow as the shape for -1 dims, e.g. --shape 1 5.",
)
@click.argument("shape_dims", nargs=-1, type=int)
@click.option("--seed", type=int, default=0, help="Random seed for the input data.")
@click.option("--verify/--no-verify", default=None, help="Check outputs equal inputs (identity models).")
@click.option("--timeout", type=float, default=30.0, help="Client deadline in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
def infer(
    url: str,
    model_name: str,
    shape_flag: bool,
    shape_dims: tuple[int, ...],
    seed: int,
    verify: bool | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Send one request to MODEL at URL (e.g. `dyntriton infer --model identity --shape 1 5`)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        metadata = client.get_model_metadata(model_name, client_timeout=timeout)
        rng = np.random.default_rng(seed)
        inputs, arrays = [], []
        for tensor in metadata.inputs:
            array = _fill(tensor.datatype, _resolve_shape(list(tensor.shape), shape_dims), rng)
            item = grpcclient.InferInput(tensor.name, list(array.shape), tensor.datatype)
            item.set_data_from_numpy(array)
            inputs.append(item)
            arrays.append(array)
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in metadata.outputs]
        result = client.infer(model_name, inputs, outputs=outputs, client_timeout=timeout)
    except InferenceServerException as exc:
        raise click.ClickException(f"{exc.status() or 'error'}: {exc.message()}") from exc
    finally:
        client.close()
    results = {t.name: result.as_numpy(t.name) for t in metadata.outputs}
    if verify is None:
        verify = model_name.startswith("identity")
    mismatched = []
    if verify:
        for array, tensor in zip(arrays, metadata.outputs, strict=False):
            got = results[tensor.name]
            if got is None or got.shape != array.shape or not np.array_equal(got, array):
                mismatched.append(tensor.name)
    if as_json:
        summary = {
            "model": model_name,
            "outputs": {name: {"shape": list(v.shape), "dtype": str(v.dtype)} for name, v in results.items()},
            "verified": verify and not mismatched,
            "mismatched": mismatched,
        }
        click.echo(json.dumps(summary))
    else:
        for array, tensor in zip(arrays, metadata.inputs, strict=False):
            click.echo(f"input  {tensor.name} {tensor.datatype} {list(array.shape)}: {array.tolist()}")
        for name, value in results.items():
            click.echo(f"output {name} {list(value.shape)}: {value.tolist()}")
        if verify:
            click.echo("verified: outputs equal inputs" if not mismatched else f"MISMATCH in {', '.join(mismatched)}")
    if mismatched:
        sys.exit(1)
