#!/usr/bin/env python3
"""Routing with one slow worker: throughput and p99 of each router policy, admission control on and off.

Two workers serve the ``busy`` model (one execution instance, never checks for cancellation): one
takes 20 ms per request, the other 60 ms (3x slower: a noisy neighbour, an older machine). Ideal
throughput is 50 + 16.7 = 66.7 req/s. A closed-loop gRPC load (``--concurrency`` callers, each
sending its next request when the last answered) runs ``--seconds`` against one frontend per
policy, one after the other. ``slow share`` is the fraction of requests the slow worker served.

    python benchmarks/bench_routing.py [--seconds 10] [--concurrency 8] [--routers round-robin,least-outstanding]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overload import CONFIG, MODEL, request_bytes

from dynamo_triton.testing.cluster import free_port, model_ready, running, wait_until, worker_requests

SLOW_MODEL_PY = '''"""busy: OUTPUT0 = INPUT0 after BUSY_MS (environment) milliseconds; never checks for cancellation."""

import os
import time

import triton_python_backend_utils as pb_utils

DELAY = float(os.environ.get("BUSY_MS", "20")) / 1000


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(DELAY)
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
'''
_INFER = "/inference.GRPCInferenceService/ModelInfer"


@contextlib.contextmanager
def cluster(tmp: Path, router: str, extra: list[str]) -> Iterator[tuple[str, list[int]]]:
    repo = tmp / "repo"
    if not repo.exists():
        (repo / MODEL / "1").mkdir(parents=True)
        (repo / MODEL / "config.pbtxt").write_text(CONFIG)
        (repo / MODEL / "1" / "model.py").write_text(SLOW_MODEL_PY)
    namespace = f"routing-{free_port()}"
    env = dict(os.environ, DYN_FILE_KV=str(tmp / "kv"))
    python = [sys.executable, "-m", "dynamo_triton"]
    with contextlib.ExitStack() as stack:
        systems = []
        for delay in (20, 60):
            system = free_port()
            argv = [*python, "worker", "--model-repository", str(repo), "--model", MODEL, "--namespace", namespace]
            argv += ["--system-port", str(system)]
            stack.enter_context(running(argv, dict(env, BUSY_MS=str(delay)), tmp / f"worker-{system}.log"))
            systems.append(system)
        port = free_port()
        argv = [*python, "frontend", "--namespace", namespace, "--router", router, "--grpc-port", str(port)]
        argv += ["--http-port", str(free_port()), *extra]
        stack.enter_context(running(argv, env, tmp / f"frontend-{port}.log"))
        url = f"127.0.0.1:{port}"
        wait_until(lambda: model_ready(url, MODEL), 180, "the frontend")
        yield url, systems


async def closed_loop(url: str, concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(url) as channel:
        rpc = channel.unary_unary(_INFER, request_serializer=None, response_deserializer=None)
        payload, _ = request_bytes(1)
        stop = time.monotonic() + seconds

        async def caller() -> None:
            while (start := time.monotonic()) < stop:
                await rpc(payload, timeout=30)
                latencies.append(time.monotonic() - start)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--routers", default="round-robin,least-outstanding,random")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dyntriton-routing-") as scratch:
        tmp = Path(scratch)
        for router in args.routers.split(","):
            for label, extra in (("on", []), ("off", ["--max-inflight", "-1"])):
                with cluster(tmp, router, extra) as (url, systems):
                    asyncio.run(closed_loop(url, args.concurrency, 1.0))  # warm-up
                    before = [worker_requests(port, MODEL) for port in systems]
                    latencies = sorted(asyncio.run(closed_loop(url, args.concurrency, args.seconds)))
                    served = [worker_requests(port, MODEL) - first for port, first in zip(systems, before, strict=True)]
                p99 = latencies[int(len(latencies) * 0.99)] * 1000
                share = served[1] / max(sum(served), 1)
                rows.append(f"{router:<18} {label:<9} {len(latencies) / args.seconds:>8.1f} {p99:>8.1f} {share:>10.2f}")
    print(f"\nbusy model, workers at 20 ms and 60 ms (ideal 66.7 req/s), c={args.concurrency}, {args.seconds:g} s each")
    print(f"{'router':<18} {'admission':<9} {'req/s':>8} {'p99 ms':>8} {'slow share':>10}")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
