#!/usr/bin/env python3
"""Triton direct vs dyntriton, side by side in one run (ratios, never pass/fail).

Starts, one after the other on 127.0.0.1 free ports and the same model repository:

1. ``tritonserver`` (the binary of the same Triton distribution the backend embeds), gRPC;
2. ``dyntriton serve --in-process`` (frontend and worker in one process, no sockets between);
3. ``dyntriton frontend`` + one ``dyntriton worker`` process (tcp transport, file store);

and applies the same closed-loop load to each: identity INT32[16] at concurrency 1, 8, 32;
identity 1 MiB at 1 and 8; ModelStreamInfer (identity INT32[16]) at 1 and 8. Prints one table
with throughput, p50, p99 and the throughput ratio to Triton direct.

    python benchmarks/bench_serving.py [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import LoadResult, identity_request, run_load

from dynamo_triton.testing.cluster import MODEL_REPO, free_port, model_ready, running, wait_until
from dynamo_triton.testing.tritonserver import run_tritonserver

SCENARIOS = [
    ("INT32[16]", "unary", 16 // 4, (1, 8, 32)),
    ("1 MiB", "unary", 1024 * 1024 // 4, (1, 8)),
    ("INT32[16] stream", "stream", 16 // 4, (1, 8)),
]


@contextmanager
def triton_direct(tmp: Path) -> Iterator[str]:
    """The wheel's ``tritonserver`` serving identity; yields its gRPC url."""
    with run_tritonserver(MODEL_REPO, ["identity"], tmp=tmp, extra_args=["--log-info=false"]) as server:
        yield server.grpc_url


def dyntriton(*args: str) -> list[str]:
    return [sys.executable, "-m", "dynamo_triton", *args]


@contextmanager
def dyntriton_in_process(tmp: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv-inproc")}
    argv = dyntriton(
        "serve",
        "--in-process",
        "--model",
        "identity",
        "--model-repository",
        str(MODEL_REPO),
        "--grpc-host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--http-port",
        str(free_port()),
        "--system-port",
        "0",
    )
    with running(argv, env, tmp / "serve.log"):
        url = f"127.0.0.1:{port}"
        wait_until(lambda: model_ready(url, "identity"), 120, "dyntriton serve --in-process")
        yield url


@contextmanager
def dyntriton_two_processes(tmp: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv-2p")}
    frontend = dyntriton(
        "frontend", "--grpc-host", "127.0.0.1", "--grpc-port", str(port), "--http-port", str(free_port())
    )
    worker = dyntriton("worker", "--model", "identity", "--model-repository", str(MODEL_REPO), "--system-port", "0")
    with running(frontend, env, tmp / "frontend.log"), running(worker, env, tmp / "worker.log"):
        url = f"127.0.0.1:{port}"
        wait_until(lambda: model_ready(url, "identity"), 120, "dyntriton frontend + worker")
        yield url


async def measure(url: str, seconds: float) -> dict[tuple[str, int], LoadResult]:
    results = {}
    for label, kind, elements, concurrencies in SCENARIOS:
        payload = identity_request("identity", np.arange(elements, dtype=np.int32).reshape(1, -1))
        for concurrency in concurrencies:
            results[(label, concurrency)] = await run_load(
                url, payload, concurrency=concurrency, seconds=seconds, stream=kind == "stream"
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    args = parser.parse_args()
    systems = [
        ("triton direct", triton_direct),
        ("dyntriton serve (1 process)", dyntriton_in_process),
        ("dyntriton frontend+worker", dyntriton_two_processes),
    ]
    table: dict[str, dict[tuple[str, int], LoadResult]] = {}
    with tempfile.TemporaryDirectory(prefix="dyntriton-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for name, start in systems:
            began = time.monotonic()
            with start(tmp) as url:
                table[name] = asyncio.run(measure(url, args.seconds))
            print(f"# measured {name} in {time.monotonic() - began:.0f} s", file=sys.stderr)
    base = table["triton direct"]
    header = (
        f"{'scenario':<18} {'conc':>4}  {'system':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} {'err':>4}"
    )
    print(header)
    print("-" * len(header))
    for label, _, _, concurrencies in SCENARIOS:
        for concurrency in concurrencies:
            for name in table:
                result = table[name][(label, concurrency)]
                ratio = result.throughput / base[(label, concurrency)].throughput
                print(
                    f"{label:<18} {concurrency:>4}  {name:<28} {result.throughput:>9.0f} "
                    f"{result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {ratio:>6.2f} {result.errors:>4}"
                )
            print()


if __name__ == "__main__":
    main()
