#!/usr/bin/env python3
"""Embedded Triton (C API, in this process) vs the same model behind the wheel's tritonserver over gRPC.

One run, side by side, sequential round trips (concurrency 1) of identity with INT32[16]
and with 1 MiB; prints median and p99 for each and the ratio. Never pass/fail.

    python benchmarks/bench_triton_inprocess.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np

from dynamo_triton.testing.cluster import MODEL_REPO
from dynamo_triton.testing.tritonserver import run_tritonserver

SIZES = {"INT32[16]": 16, "1 MiB": 1024 * 1024 // 4}


def summary(samples: list[float]) -> tuple[float, float]:
    ms = sorted(value * 1000 for value in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]


async def in_process(requests: int) -> dict[str, tuple[float, float]]:
    from dyntriton_backend_triton.environment import backends_directory, prepare_stub_environment
    from dyntriton_backend_triton.locator import locate_triton
    from dyntriton_backend_triton.server import InputTensor, ServerOptions, TritonServer

    install = locate_triton()
    prepare_stub_environment(install)
    server = TritonServer(install, ServerOptions(MODEL_REPO, backends_directory(install)))
    await asyncio.to_thread(server.start_blocking)
    await asyncio.to_thread(server.load_model, "identity")
    results = {}
    try:
        for label, elements in SIZES.items():
            data = np.arange(elements, dtype=np.int32).tobytes()
            tensor = [InputTensor("INPUT0", "INT32", [1, elements], data)]
            samples = []
            for index in range(requests + 100):
                start = time.perf_counter()
                async for _ in server.infer("identity", tensor):
                    pass
                if index >= 100:
                    samples.append(time.perf_counter() - start)
            results[label] = summary(samples)
    finally:
        await asyncio.to_thread(server.stop_blocking)
    return results


def over_grpc(url: str, requests: int) -> dict[str, tuple[float, float]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    results = {}
    for label, elements in SIZES.items():
        item = grpcclient.InferInput("INPUT0", [1, elements], "INT32")
        item.set_data_from_numpy(np.arange(elements, dtype=np.int32).reshape(1, -1))
        samples = []
        for index in range(requests + 100):
            start = time.perf_counter()
            client.infer("identity", [item])
            if index >= 100:
                samples.append(time.perf_counter() - start)
        results[label] = summary(samples)
    client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    embedded = asyncio.run(in_process(args.requests))
    with run_tritonserver(MODEL_REPO, ["identity"]) as server:
        remote = over_grpc(server.grpc_url, args.requests)
    print(f"{'payload':<10} {'in-process p50/p99 ms':>22} {'tritonserver gRPC p50/p99 ms':>30} {'p50 ratio':>10}")
    for label in SIZES:
        (p50, p99), (g50, g99) = embedded[label], remote[label]
        print(f"{label:<10} {p50:>10.3f} / {p99:<9.3f} {g50:>14.3f} / {g99:<13.3f} {g50 / p50:>10.2f}x")


if __name__ == "__main__":
    main()
