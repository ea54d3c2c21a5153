#!/usr/bin/env python3
"""KServe v2 REST: Triton's own HTTP endpoint vs dyntriton's, side by side in one run (ratios, never pass/fail).

Starts, at the same time on 127.0.0.1 free ports and the same model repository:

1. ``tritonserver`` (the binary of the Triton distribution the backend embeds), HTTP;
2. ``python ceiling``: aiohttp on uvloop answering at once with a fixed answer
   (benchmarks/noop_http_server.py), the most the frontend's HTTP stack can do here;
3. ``dyntriton serve`` (frontend + one worker process, tcp transport, file store);
4. ``dyntriton serve --in-process`` (frontend and worker in one process);

and drives each with ``h2load --h1`` (closed loop: ``-c C`` connections, one request in
flight on each) posting a pre-built body to ``/v2/models/identity/infer``:

- ``JSON INT32[16]``: JSON ``data`` in and out;
- ``binary 1 MiB``: the binary tensor data extension in and out (``binary_data: true``).

This machine is a VM whose speed drifts by 2x within minutes, so the systems take turns:
each point is measured ``--rounds`` times, the systems interleaved within each round, and
the table shows the median round (an idle server costs nothing while another is loaded).
Each point is checked first with one real request (h2load sees only status codes).
Latencies come from h2load's per-request log; CPU per request is the utime + stime of the
system's whole process tree (Triton's python stub and dyntriton's worker included) over the
requests of the measured window.

    python benchmarks/bench_rest.py [--seconds 5] [--rounds 3]
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_h2load import tree_cpu_seconds

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
    """One real request: the answer must be the input (identity; the ceiling's fixed answer is not checked)."""
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
    cpu_us: float


def h2load(system: System, scenario: Scenario, concurrency: int, seconds: float, tmp: Path) -> Point:
    body, log = tmp / "body.bin", tmp / "h2load.log"
    body.write_bytes(scenario.body)
    log.unlink(missing_ok=True)
    duration = max(1, round(seconds))
    argv = ["h2load", "--h1", "-c", str(concurrency), "-m", "1", "-D", str(duration), "--warm-up-time", "1"]
    argv += ["-d", str(body), "--log-file", str(log)]
    for name, value in scenario.headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://127.0.0.1:{system.port}/v2/models/identity/infer")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # CPU is counted over the measured window only (after the warm-up second)
    cpu_before = tree_cpu_seconds(system.pid)
    _, err = process.communicate(timeout=seconds + 120)
    cpu = tree_cpu_seconds(system.pid) - cpu_before
    if process.returncode:
        raise SystemExit(f"h2load failed on {system.name}: {err.decode(errors='replace')}")
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    statuses = np.array([int(row[1]) for row in rows])
    latencies_ms = np.array([int(row[2]) for row in rows]) / 1000.0
    ok = latencies_ms[statuses == 200]
    return Point(
        requests=len(ok),
        failed=int((statuses != 200).sum()),
        throughput=len(ok) / duration,
        p50_ms=float(np.percentile(ok, 50)) if len(ok) else float("nan"),
        p99_ms=float(np.percentile(ok, 99)) if len(ok) else float("nan"),
        cpu_us=cpu / max(len(rows), 1) * 1e6,
    )


def median_point(points: list[Point]) -> Point:
    """The round of median throughput (its latencies and CPU belong to that same round)."""
    return sorted(points, key=lambda point: point.throughput)[len(points) // 2]


def _ready(port: int) -> bool:
    return http_get(port, "/v2/models/identity/ready")[0] == 200


def wait_ready(port: int, what: str, log: Path) -> None:
    """Wait (generously: the machine may be busy) for identity to be ready; on timeout show the log's tail."""
    try:
        wait_until(lambda: _ready(port), 300, what)
    except AssertionError as exc:
        raise SystemExit(f"{exc}\n--- {log} ---\n{log.read_text(errors='replace')[-3000:]}") from None


@dataclass(frozen=True)
class System:
    """A system under test: its name, HTTP port and the pid at the root of its process tree."""

    name: str
    port: int
    pid: int


@contextmanager
def triton_direct(tmp: Path) -> Iterator[System]:
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
    with running(argv, dict(os.environ), tmp / "tritonserver.log") as proc:
        wait_ready(port, "tritonserver", tmp / "tritonserver.log")
        yield System("triton direct (HTTP)", port, proc.pid)


@contextmanager
def python_ceiling(tmp: Path) -> Iterator[System]:
    port = free_port()
    script = Path(__file__).with_name("noop_http_server.py")
    with running([sys.executable, str(script), str(port)], dict(os.environ), tmp / "noop.log") as proc:
        wait_ready(port, "the no-op HTTP server", tmp / "noop.log")
        yield System("python ceiling (no-op aiohttp)", port, proc.pid)


@contextmanager
def dyntriton(tmp: Path, *extra: str) -> Iterator[System]:
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
    with running(argv, env, log) as proc:
        wait_ready(port, "dyntriton serve", log)
        yield System(" ".join(["dyntriton serve", *extra]), port, proc.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each system takes at each point")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is not installed (Debian: apt-get install nghttp2-client)")
    cases = scenarios()
    rounds: dict[tuple[str, str, int], list[Point]] = {}
    with tempfile.TemporaryDirectory(prefix="dyntriton-bench-rest-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        systems = [
            stack.enter_context(triton_direct(tmp)),
            stack.enter_context(python_ceiling(tmp)),
            stack.enter_context(dyntriton(tmp)),
            stack.enter_context(dyntriton(tmp, "--in-process")),
        ]
        for scenario in cases:
            for system in (systems[0], *systems[2:]):
                check(system.port, scenario)
            for concurrency in CONCURRENCY:
                for _ in range(args.rounds):
                    for system in systems:
                        point = h2load(system, scenario, concurrency, args.seconds, tmp)
                        rounds.setdefault((system.name, scenario.label, concurrency), []).append(point)
            print(f"# measured {scenario.label}", file=sys.stderr)
        names = [system.name for system in systems]
    header = f"{'scenario':<16} {'conc':>4}  {'system':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}"
    header += f" {'CPU us/req':>10} {'fail':>5}"
    print(f"median of {args.rounds} interleaved rounds of {args.seconds:g} s")
    print(header)
    print("-" * len(header))
    for scenario in cases:
        for concurrency in CONCURRENCY:
            base = median_point(rounds[(names[0], scenario.label, concurrency)])
            for name in names:
                point = median_point(rounds[(name, scenario.label, concurrency)])
                ratio = point.throughput / base.throughput if base.throughput else float("nan")
                failed = sum(each.failed for each in rounds[(name, scenario.label, concurrency)])
                print(
                    f"{scenario.label:<16} {concurrency:>4}  {name:<30} {point.throughput:>9.0f} "
                    f"{point.p50_ms:>8.2f} {point.p99_ms:>8.2f} {ratio:>6.2f} {point.cpu_us:>10.0f} {failed:>5}"
                )
            print()


if __name__ == "__main__":
    main()
