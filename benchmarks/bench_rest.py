#!/usr/bin/env python3
"""KServe v2 REST: Triton's own HTTP endpoint vs dyntriton's, side by side in one run (ratios, never pass/fail).

Starts, one after the other on 127.0.0.1 free ports and the same model repository:

1. ``tritonserver`` (the binary of the Triton distribution the backend embeds), HTTP;
2. ``dyntriton serve`` (frontend + one worker process, tcp transport, file store);
3. ``dyntriton serve --in-process`` (frontend and worker in one process);

and drives each with ``h2load --h1`` (closed loop: ``-c C`` connections, one request in
flight on each) posting a pre-built body to ``/v2/models/identity/infer``:

- ``JSON INT32[16]``: JSON ``data`` in and out;
- ``binary 1 MiB``: the binary tensor data extension in and out (``binary_data: true``).

Each point is checked first with one real request (h2load sees only status codes).
Latencies come from h2load's per-request log. Prints throughput, p50, p99 and the
throughput ratio to Triton direct.

    python benchmarks/bench_rest.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamo_triton.testing.cluster import MODEL_REPO, free_port, http_get, running, wait_until

CONCURRENCY = (1, 8)


@dataclass(frozen=True)
class Scenario:
    """One request body (and its headers) and how to check its answer."""

    label: str
    body: bytes
    headers: dict[str, str]
    expected: np.ndarray


def scenarios() -> list[Scenario]:
    small = np.arange(16, dtype=np.int32).reshape(1, 16)
    json_body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": small.reshape(-1).tolist()}]}
    ).encode()
    big = np.random.default_rng(0).integers(0, 2**31 - 1, (1, 262144), dtype=np.int32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 262144],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": big.nbytes},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary_headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return [
        Scenario("JSON INT32[16]", json_body, {"Content-Type": "application/json"}, small),
        Scenario("binary 1 MiB", header + big.tobytes(), binary_headers, big),
    ]


def check(port: int, scenario: Scenario) -> None:
    """One real request: the answer must be the input (identity)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/identity/infer", data=scenario.body, headers=scenario.headers
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
        length = response.headers.get("Inference-Header-Content-Length")
    if length is None:
        got = np.array(json.loads(body)["outputs"][0]["data"], np.int32)
    else:
        got = np.frombuffer(body[int(length) :], np.int32)
    if not np.array_equal(got.reshape(-1), scenario.expected.reshape(-1)):
        raise SystemExit(f"{scenario.label}: port {port} answered a wrong result")


@dataclass(frozen=True)
class Point:
    requests: int
    failed: int
    throughput: float
    p50_ms: float
    p99_ms: float


def h2load(port: int, scenario: Scenario, concurrency: int, seconds: float, tmp: Path) -> Point:
    body, log = tmp / "body.bin", tmp / "h2load.log"
    body.write_bytes(scenario.body)
    log.unlink(missing_ok=True)
    argv = [
        "h2load",
        "--h1",
        "-c",
        str(concurrency),
        "-m",
        "1",
        "-D",
        f"{max(1, round(seconds))}",
        "--warm-up-time",
        "1",
    ]
    argv += ["-d", str(body), "--log-file", str(log)]
    for name, value in scenario.headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://127.0.0.1:{port}/v2/models/identity/infer")
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 120)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    statuses = np.array([int(row[1]) for row in rows])
    latencies_ms = np.array([int(row[2]) for row in rows]) / 1000.0
    ok = latencies_ms[statuses == 200]
    return Point(
        requests=len(ok),
        failed=int((statuses != 200).sum()),
        throughput=len(ok) / max(1, round(seconds)),
        p50_ms=float(np.percentile(ok, 50)) if len(ok) else float("nan"),
        p99_ms=float(np.percentile(ok, 99)) if len(ok) else float("nan"),
    )


def _ready(port: int) -> bool:
    return http_get(port, "/v2/models/identity/ready")[0] == 200


def wait_ready(port: int, what: str, log: Path) -> None:
    """Wait (generously: the machine may be busy) for identity to be ready; on timeout show the log's tail."""
    try:
        wait_until(lambda: _ready(port), 300, what)
    except AssertionError as exc:
        raise SystemExit(f"{exc}\n--- {log} ---\n{log.read_text(errors='replace')[-3000:]}") from None


@contextmanager
def triton_direct(tmp: Path) -> Iterator[int]:
    from dyntriton_backend_triton.environment import backends_directory, prepare_stub_environment
    from dyntriton_backend_triton.locator import locate_triton

    install = locate_triton()
    prepare_stub_environment(install)  # the binary needs the same libraries and stub as the embedded server
    if install.binary is None:
        raise SystemExit(f"{install.source} has no tritonserver binary")
    port = free_port()
    argv = [
        str(install.binary),
        f"--model-repository={MODEL_REPO}",
        f"--backend-directory={backends_directory(install)}",
        "--model-control-mode=explicit",
        "--load-model=identity",
        f"--http-port={port}",
        f"--grpc-port={free_port()}",
        "--allow-metrics=false",
        "--log-info=false",
    ]
    with running(argv, dict(os.environ), tmp / "tritonserver.log"):
        wait_ready(port, "tritonserver", tmp / "tritonserver.log")
        yield port


@contextmanager
def dyntriton(tmp: Path, *extra: str) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, "DYN_FILE_KV": str(tmp / f"kv{len(extra)}")}
    argv = [
        sys.executable,
        "-m",
        "dynamo_triton",
        "serve",
        "--model",
        "identity",
        "--model-repository",
        str(MODEL_REPO),
    ]
    argv += ["--grpc-host", "127.0.0.1", "--grpc-port", str(free_port()), "--http-port", str(port)]
    argv += ["--system-port", "0", *extra]
    log = tmp / f"serve{len(extra)}.log"
    with running(argv, env, log):
        wait_ready(port, "dyntriton serve", log)
        yield port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is not installed (Debian: apt-get install nghttp2-client)")
    systems = [
        ("triton direct (HTTP)", lambda tmp: triton_direct(tmp)),
        ("dyntriton serve", lambda tmp: dyntriton(tmp)),
        ("dyntriton serve --in-process", lambda tmp: dyntriton(tmp, "--in-process")),
    ]
    cases = scenarios()
    table: dict[str, dict[tuple[str, int], Point]] = {}
    with tempfile.TemporaryDirectory(prefix="dyntriton-bench-rest-") as tmp_name:
        tmp = Path(tmp_name)
        for name, start in systems:
            began = time.monotonic()
            with start(tmp) as port:
                results: dict[tuple[str, int], Point] = {}
                for scenario in cases:
                    check(port, scenario)
                    for concurrency in CONCURRENCY:
                        results[(scenario.label, concurrency)] = h2load(port, scenario, concurrency, args.seconds, tmp)
                table[name] = results
            print(f"# measured {name} in {time.monotonic() - began:.0f} s", file=sys.stderr)
    base = table["triton direct (HTTP)"]
    header = f"{'scenario':<16} {'conc':>4}  {'system':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}"
    header += f" {'fail':>5}"
    print(header)
    print("-" * len(header))
    for scenario in cases:
        for concurrency in CONCURRENCY:
            key = (scenario.label, concurrency)
            for name, results in table.items():
                point = results[key]
                ratio = point.throughput / base[key].throughput if base[key].throughput else float("nan")
                print(
                    f"{scenario.label:<16} {concurrency:>4}  {name:<30} {point.throughput:>9.0f} "
                    f"{point.p50_ms:>8.2f} {point.p99_ms:>8.2f} {ratio:>6.2f} {point.failed:>5}"
                )
            print()


if __name__ == "__main__":
    main()
