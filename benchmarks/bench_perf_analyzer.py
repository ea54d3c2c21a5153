#!/usr/bin/env python3
"""Triton's own load tool, ``perf_analyzer``, against Triton direct and ``dyntriton serve``: one run, ratios.

Each case runs on both systems one after the other (Triton direct, then serve: a frontend and one
worker process, file store, tcp), on the python ``identity`` model: gRPC and HTTP, tensors in the
body and in system shared memory (``--shared-memory system``), INT32[16] at concurrency 1 and
1 MiB at concurrency 4. perf_analyzer fails on a wrong answer status, so every line is also a
pass/fail of the protocol; the numbers are never pass/fail.

perf_analyzer is the binary of the ``tritonclient`` 2.41.0 wheel (the last that ships it). It needs
Debian's ``libb64-0d`` and ``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12`` wheel's
``nvidia/cuda_runtime/lib``) on ``LD_LIBRARY_PATH``; it runs on CPU. ``nox -s perf_analyzer`` gets both
into its own virtualenv (never the project's dependencies) and runs this script.

    python benchmarks/bench_perf_analyzer.py --perf-analyzer PATH [--cudart DIR] [--only "1 MiB c=4 system"]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynamo_triton.testing.cluster import MODEL_REPO, free_port, model_ready, running, wait_until
from dynamo_triton.testing.tritonserver import run_tritonserver

#: (label, elements of INT32, concurrency)
SIZES = [("INT32[16]", 16, 1), ("1 MiB", 1024 * 1024 // 4, 4)]
_RESULT = re.compile(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+) usec")


@contextmanager
def triton_direct(tmp: Path) -> Iterator[tuple[str, str]]:
    with run_tritonserver(MODEL_REPO, ["identity"], tmp=tmp, extra_args=["--log-info=false"]) as server:
        yield server.grpc_url, server.http_url


@contextmanager
def serve(tmp: Path) -> Iterator[tuple[str, str]]:
    grpc_port, http_port = free_port(), free_port()
    argv = [sys.executable, "-m", "dynamo_triton", "serve", "--model", "identity"]
    argv += ["--model-repository", str(MODEL_REPO), "--store-kv", "file", "--file-kv-root", str(tmp / "kv")]
    argv += ["--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    argv += ["--system-port", str(free_port())]
    with running(argv, dict(os.environ), tmp / "serve.log"):
        url = f"127.0.0.1:{grpc_port}"
        wait_until(lambda: model_ready(url, "identity"), 180, "dyntriton serve")
        yield url, f"127.0.0.1:{http_port}"


def perf_analyzer(
    binary: str, env: dict[str, str], protocol: str, url: str, elements: int, concurrency: int, shared: bool
) -> tuple[float, float] | str:
    """(infer/s, mean latency µs), or the failure's last lines."""
    argv = [binary, "-m", "identity", "-i", protocol, "-u", url, "--shape", f"INPUT0:{elements}"]
    argv += ["--concurrency-range", str(concurrency), "--measurement-interval", "3000", "--max-trials", "3"]
    argv += ["--stability-percentage", "1000"]  # a shared machine: report what was measured, do not retry
    if shared:
        argv += ["--shared-memory", "system", "--output-shared-memory-size", str(elements * 4)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    found = _RESULT.findall(done.stdout)
    if done.returncode or not found:
        return "FAILED: " + " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    _, throughput, latency = found[-1]
    return float(throughput), float(latency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER", "perf_analyzer"))
    parser.add_argument("--cudart", default=os.environ.get("CUDART_LIB_DIR", ""), help="libcudart.so.12's folder")
    parser.add_argument("--only", default="", help='comma-separated case labels, e.g. "1 MiB c=4 system"')
    args = parser.parse_args()
    env = dict(os.environ)
    if args.cudart:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (args.cudart, env.get("LD_LIBRARY_PATH", "")) if p)
    cases = [
        (
            f"{label} c={concurrency} {'system' if shared else 'body'} {protocol}",
            protocol,
            elements,
            concurrency,
            shared,
        )
        for label, elements, concurrency in SIZES
        for shared in (False, True)
        for protocol in ("grpc", "http")
    ]
    if args.only:
        wanted = [item.strip() for item in args.only.split(",")]
        cases = [case for case in cases if any(case[0].startswith(item) for item in wanted)]
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"perf_analyzer, identity (python backend), one run on {os.cpu_count()} cores, load {' '.join(load)}")
    results: dict[str, dict[str, tuple[float, float] | str]] = {}
    with tempfile.TemporaryDirectory(prefix="dyntriton-perf-analyzer-") as tmp_dir:
        tmp = Path(tmp_dir)
        for system, start in (("triton direct", triton_direct), ("serve", serve)):
            (tmp / system).mkdir()
            with start(tmp / system) as (grpc_url, http_url):
                for name, protocol, elements, concurrency, shared in cases:
                    url = grpc_url if protocol == "grpc" else http_url
                    results.setdefault(name, {})[system] = perf_analyzer(
                        args.perf_analyzer, env, protocol, url, elements, concurrency, shared
                    )
                    time.sleep(0.5)  # let the previous run's connections close
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load after the run {' '.join(load)}")
    print(f"{'case':34} {'triton direct':>22} {'serve':>22} {'ratio':>6}")
    failed = False
    for name, by_system in results.items():
        cells, numbers = [], []
        for system in ("triton direct", "serve"):
            value = by_system.get(system, "missing")
            if isinstance(value, str):
                failed = True
                cells.append(value[:60])
            else:
                numbers.append(value[0])
                cells.append(f"{value[0]:9.1f}/s {value[1]:7.0f} µs")
        ratio = f"{numbers[1] / numbers[0]:.2f}" if len(numbers) == 2 and numbers[0] else "-"
        print(f"{name:34} {cells[0]:>22} {cells[1]:>22} {ratio:>6}")
    if failed:
        print("some perf_analyzer runs failed (see above)")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
