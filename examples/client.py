#!/usr/bin/env python3
"""Call a model served by dyntriton with the stock tritonclient gRPC client.

Start the server first (``dyntriton serve --model identity`` or
``examples/launch/identity.sh``), then::

    python examples/client.py
    python examples/client.py --model identity --shape 1 10 --requests 5
    DYN_GRPC_PORT=9001 python examples/client.py    # a serve started with --grpc-port 9001
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Send KServe v2 gRPC requests to a dyntriton frontend.")
    port = os.environ.get("DYN_GRPC_PORT", "").strip() or "8787"
    parser.add_argument(
        "--url",
        default=os.environ.get("DYN_GRPC_URL") or f"localhost:{port}",
        help="frontend host:port (default %(default)s: $DYN_GRPC_URL, else localhost:$DYN_GRPC_PORT)",
    )
    parser.add_argument("--model", default="identity", help="model name (default %(default)s)")
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 5], help="input shape (default 1 5)")
    parser.add_argument("--requests", type=int, default=1, help="how many requests to send")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    client = grpcclient.InferenceServerClient(url=args.url)
    try:
        if not client.is_server_live() or not client.is_model_ready(args.model):
            print(f"server at {args.url} is live but model {args.model!r} is not ready", file=sys.stderr)
            return 1
        metadata = client.get_model_metadata(args.model)
        spec = metadata.inputs[0]
        print(f"model {metadata.name} versions {list(metadata.versions)}: input {spec.name} {spec.datatype}")
        rng = np.random.default_rng(0)
        for i in range(args.requests):
            data = rng.integers(0, 100, size=args.shape).astype(triton_to_np_dtype(spec.datatype))
            tensor = grpcclient.InferInput(spec.name, list(data.shape), spec.datatype)
            tensor.set_data_from_numpy(data)
            output_name = metadata.outputs[0].name
            result = client.infer(args.model, [tensor], outputs=[grpcclient.InferRequestedOutput(output_name)])
            output = result.as_numpy(output_name)
            same = output is not None and np.array_equal(output, data)
            print(f"request {i}: sent {data.tolist()} got {None if output is None else output.tolist()}")
            if not same:
                print("output differs from input", file=sys.stderr)
                return 1
    except InferenceServerException as exc:
        if "UNAVAILABLE" in str(exc.status()):
            print(
                f"cannot reach a KServe gRPC endpoint at {args.url}: {exc.message()}\n"
                "start one (`dyntriton serve`), or pass --url HOST:PORT (or set DYN_GRPC_URL / DYN_GRPC_PORT)",
                file=sys.stderr,
            )
        else:
            print(f"request failed: {exc.status()} {exc.message()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print("ok: every output equals its input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
