#!/usr/bin/env python3
"""Scaling out: throughput of the latency-bound ``delay`` model with 1, 2 and 4 workers, one run, ratios.

Each worker embeds its own Triton running ``model_repo/delay`` (python backend, ``instance_group``
count 2, every request sleeps ``DELAY_MS`` = 20 ms): a worker is a device with two slots, so one
worker serves at most 2 / 20 ms = 100 req/s, however many requests wait, and N workers should serve
N times that. The load is closed-loop ``h2load -c C -m 1`` (``C`` = 16 per worker, so every slot
always has requests queued behind it) sending one pre-serialized gRPC ModelInfer frame, as in
bench_h2load.py. Systems, each ``dyntriton serve`` on 127.0.0.1 free ports, one after the other:

- ``tcp``: ``--transport tcp`` (the default) and the file store, 1, 2 and 4 workers;
- ``nats``: ``--transport nats --store-kv nats`` against a fresh ``nats-server -js`` on a free port;
- ``tcp 2 frontends``: ``--frontends 2`` (two frontend processes sharing the port, SO_REUSEPORT).

Every system is also measured at C = 2N (one request per slot: every slot busy, nothing queued
if routing is even) and the 1-worker ones at C = 1 (one request alone): the latencies of the
tcp vs NATS table, the request plane's own cost on top of the 20 ms sleep.

Columns: ``ratio`` is throughput over the same request plane's 1-worker, 1-frontend throughput at
the same C/N (target ≥ 0.9·N); ``of max`` is throughput over N times a worker's ceiling (slots /
DELAY_MS); ``spread`` is the fewest over the most requests one worker served in the window (1.00:
even routing; from the workers' /metrics); ``srv us/req`` is the utime + stime of serve's whole
process tree (frontends, workers, Triton's python stubs) per completed request in the measured
window, ``nats us/req`` the same for nats-server; ``client`` is h2load's CPU in % of one core (well
below 100 % means the load generator did not set the pace); ``load`` is the 1-minute load average
after the point (other work on the host skews the figures). Warnings serve logged during a point
are printed under the table. h2load sees HTTP status only (gRPC errors travel in trailers), so real
calls check the answer first and a response faster than ``DELAY_MS``, which only an error can be,
counts as failed.

    python benchmarks/bench_scaling.py [--seconds 6] [--only "tcp 1,nats 1"] [--per-worker 16] [--router R]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_h2load import PATH, tree_cpu_seconds

from dynamo_triton.testing.cluster import MODEL_REPO, free_port, running, wait_until, worker_requests
from dynamo_triton.testing.nats import NatsNotInstalled, nats_binary, run_nats

MODEL = "delay"
CONFIG = MODEL_REPO / MODEL / "config.pbtxt"
#: The serve log line printed once every worker of this serve registered its models.
SERVING = "dyntriton is serving"
#: A worker's start-up line in serve's log, with its system port (/metrics) at the end.
WORKER_LINE = re.compile(r"^worker \S+ serving .* system http://[^:]+:(\d+)/metrics", re.MULTILINE)


@dataclass(frozen=True)
class System:
    """One ``dyntriton serve`` configuration."""

    name: str
    workers: int
    transport: str = "tcp"
    frontends: int = 1

    @property
    def plane(self) -> str:
        """The request plane, the key of the 1-worker baseline."""
        return self.transport


SYSTEMS = [
    *(System(f"tcp {n}", n) for n in (1, 2, 4)),
    *(System(f"nats {n}", n, transport="nats") for n in (1, 2, 4)),
    *(System(f"tcp {n} 2 frontends", n, frontends=2) for n in (2, 4)),
]


@dataclass(frozen=True)
class Point:
    """One measured load point."""

    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    done: int
    failed: int
    server_us: float
    nats_us: float
    client_pct: float
    load: float
    spread: float
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Serving:
    """A running system: its gRPC url, the pids whose process trees it is made of, its workers' system ports."""

    url: str
    pid: int
    nats_pid: int | None
    worker_ports: tuple[int, ...]
    log: Path


def grpc_frame(delay_ms: int) -> bytes:
    """A gRPC length-prefixed ModelInferRequest for ``delay``: INPUT0 INT32[16], DELAY_MS."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[16])
    request.inputs.add(name="DELAY_MS", datatype="UINT32", shape=[1])
    request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
    request.raw_input_contents.append(np.array([delay_ms], dtype=np.uint32).tobytes())
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def slots_per_worker() -> int:
    """The delay model's ``instance_group`` count: requests one worker runs at a time."""
    found = re.search(r"count:\s*(\d+)", CONFIG.read_text())
    return int(found.group(1)) if found else 1


def check_calls(url: str, delay_ms: int, calls: int) -> None:
    """Real calls (each on a new connection, reaching every frontend): right answer, not before the delay."""
    import tritonclient.grpc as grpcclient

    values = np.arange(16, dtype=np.int32)
    for _ in range(calls):
        client = grpcclient.InferenceServerClient(url)
        try:
            tensor = grpcclient.InferInput("INPUT0", [16], "INT32")
            tensor.set_data_from_numpy(values)
            delay = grpcclient.InferInput("DELAY_MS", [1], "UINT32")
            delay.set_data_from_numpy(np.array([delay_ms], dtype=np.uint32))
            began = time.perf_counter()
            result = client.infer(MODEL, [tensor, delay])
            took_ms = (time.perf_counter() - began) * 1000
        finally:
            client.close()
        if not np.array_equal(result.as_numpy("OUTPUT0"), values) or took_ms < delay_ms:
            raise SystemExit(f"{url}: {MODEL} answered wrong data or too early ({took_ms:.1f} ms)")


@contextlib.contextmanager
def serve(system: System, tmp: Path, router: str) -> Iterator[Serving]:
    """``dyntriton serve`` for ``system`` (with its own nats-server when it needs one), once every worker serves."""
    with contextlib.ExitStack() as stack:
        port = free_port()
        env = {**os.environ, "DYN_FILE_KV": str(tmp / f"kv-{port}")}
        store = "file"
        nats_pid = None
        if system.transport == "nats":
            nats = stack.enter_context(run_nats(tmp / f"nats-{port}"))
            env["NATS_SERVER"] = nats.url
            store, nats_pid = "nats", nats.process.pid
        argv = [sys.executable, "-m", "dynamo_triton", "serve", "--model", MODEL]
        argv += ["--model-repository", str(MODEL_REPO), "--grpc-host", "127.0.0.1", "--grpc-port", str(port)]
        argv += ["--http-port", str(free_port()), "--system-port", "0", "--store-kv", store]
        argv += ["--transport", system.transport, "--workers", str(system.workers)]
        argv += ["--frontends", str(system.frontends), "--router", router]
        argv += ["--max-connection-age", "0"]  # h2load does not reconnect after a GOAWAY
        log = tmp / f"serve-{port}.log"
        proc = stack.enter_context(running(argv, env, log))

        def serving() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"serve for {system.name} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            return SERVING in log.read_text(errors="replace")

        wait_until(serving, 300, f"dyntriton serve ({system.name})")
        ports = tuple(int(found) for found in WORKER_LINE.findall(log.read_text(errors="replace")))
        if len(ports) != system.workers:
            raise SystemExit(
                f"serve for {system.name}: {len(ports)} worker system ports in its log:\n{log.read_text()}"
            )
        yield Serving(f"127.0.0.1:{port}", proc.pid, nats_pid, ports, log)


def h2load(running: Serving, frame: Path, concurrency: int, seconds: float, delay_ms: int, log: Path) -> Point:
    """Closed-loop load from h2load, latencies from its per-request log, CPU of server, broker and client."""
    argv = ["h2load", "-c", str(concurrency), "-m", "1", "-D", str(max(1, round(seconds))), "--warm-up-time", "1"]
    argv += ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv += ["--log-file", str(log), f"http://{running.url}{PATH}"]
    client_before = _children_cpu_seconds()
    began = time.time()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Count server CPU over the measured window only (after the warm-up second).
    time.sleep(1.0)
    measured_from = time.time()
    served_before = [worker_requests(port, MODEL) for port in running.worker_ports]
    log_before = running.log.stat().st_size
    server_before = tree_cpu_seconds(running.pid)
    nats_before = tree_cpu_seconds(running.nats_pid) if running.nats_pid else 0.0
    out, _ = process.communicate(timeout=seconds + 60)
    server = tree_cpu_seconds(running.pid) - server_before
    nats = tree_cpu_seconds(running.nats_pid) - nats_before if running.nats_pid else 0.0
    ports = running.worker_ports
    served = [worker_requests(port, MODEL) - before for port, before in zip(ports, served_before, strict=True)]
    with running.log.open(errors="replace") as handle:
        handle.seek(log_before)
        notes = tuple(line.strip() for line in handle if " WARNING " in line or " ERROR " in line)
    client = _children_cpu_seconds() - client_before
    wall = time.time() - began
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not finished or not requests:
        raise SystemExit(f"could not read h2load's output:\n{out}")
    latencies, early = _latencies_ms(log, measured_from, delay_ms)
    done = int(requests.group(1))
    per_request = 1e6 / max(done, 1)
    return Point(
        concurrency=concurrency,
        rps=float(finished.group(2)),
        p50_ms=float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        done=done,
        failed=int(requests.group(3)) + early,
        server_us=server * per_request,
        nats_us=nats * per_request,
        client_pct=100 * client / wall,
        load=os.getloadavg()[0],
        spread=min(served) / max(served) if max(served) else float("nan"),
        notes=notes,
    )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _latencies_ms(log: Path, since: float, delay_ms: int) -> tuple[np.ndarray, int]:
    """Milliseconds of the requests h2load started after ``since`` (epoch s), and how many beat the delay.

    h2load's ``--log-file`` has one line per request: start (epoch us), HTTP status, duration (us).
    """
    rows = np.loadtxt(log, dtype=np.float64, ndmin=2) if log.stat().st_size else np.empty((0, 3))
    measured = rows[rows[:, 0] >= since * 1e6]
    ms = measured[:, 2] / 1000
    return ms, int((ms < delay_ms).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point (after 1 s warm-up)")
    parser.add_argument("--per-worker", type=int, default=16, help="h2load connections per worker (C = this * N)")
    parser.add_argument("--delay-ms", type=int, default=20, help="DELAY_MS of every request")
    parser.add_argument("--router", default="round-robin", help="serve's --router policy")
    parser.add_argument("--only", default="", help="comma-separated systems to run (default: all)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: install it with `apt-get install nghttp2-client` (Debian/Ubuntu)")
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    systems = [system for system in SYSTEMS if not chosen or system.name in chosen]
    if any(system.transport == "nats" for system in systems):
        try:
            nats_binary()
        except NatsNotInstalled as exc:
            raise SystemExit(str(exc)) from None
    results: dict[str, list[Point]] = {}
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="dyntriton-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        frame = tmp / "frame.bin"
        frame.write_bytes(grpc_frame(args.delay_ms))
        for system in systems:
            began = time.monotonic()
            with serve(system, tmp, args.router) as serving:
                check_calls(serving.url, args.delay_ms, calls=4 * system.frontends)
                slots = slots_per_worker() * system.workers
                concurrencies = ([1] if system.workers == 1 else []) + [slots, args.per_worker * system.workers]
                results[system.name] = [
                    h2load(serving, frame, c, args.seconds, args.delay_ms, tmp / f"h2load-{system.name}-{c}.log")
                    for c in concurrencies
                ]
            print(f"# measured {system.name} in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    print(
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
        f"delay {args.delay_ms} ms, {args.seconds:g} s per point, router {args.router}"
    )
    ceiling = slots_per_worker() * 1000 / args.delay_ms
    print(f"ceiling per worker: instance_group count {slots_per_worker()} / {args.delay_ms} ms = {ceiling:.0f} req/s")
    print_table(systems, results, ceiling)
    print_latency(systems, results)


def print_table(systems: list[System], results: dict[str, list[Point]], ceiling: float) -> None:
    """Every point: throughput, its ratio to the same plane's 1 worker at the same C/N, its share of N * ``ceiling``."""
    baseline = {
        (s.plane, p.concurrency): p.rps for s in systems if s.workers == 1 and s.frontends == 1 for p in results[s.name]
    }
    header = (
        f"{'system':<20} {'N':>2} {'F':>2} {'c':>4} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6} "
        f"{'target':>6} {'of max':>6} {'spread':>6} {'srv us/req':>10} {'nats us/req':>11} {'client':>6} "
        f"{'failed':>6} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for system in systems:
        for point in results[system.name]:
            base = baseline.get((system.plane, point.concurrency // system.workers)) if point.concurrency > 1 else None
            ratio = f"{point.rps / base:>6.2f}" if base else f"{'':>6}"
            target = f"{0.9 * system.workers:>6.1f}" if base and system.workers > 1 else f"{'':>6}"
            share = point.rps / (ceiling * system.workers)
            nats = f"{point.nats_us:>11.0f}" if system.transport == "nats" else f"{'-':>11}"
            print(
                f"{system.name:<20} {system.workers:>2} {system.frontends:>2} {point.concurrency:>4} "
                f"{point.rps:>7.0f} {point.p50_ms:>7.1f} {point.p99_ms:>7.1f} {ratio} {target} {share:>6.0%} "
                f"{point.spread:>6.2f} "
                f"{point.server_us:>10.0f} {nats} {point.client_pct:>5.0f}% {point.failed:>6} {point.load:>5.2f}"
            )
    for system in systems:
        for point in results[system.name]:
            for note in point.notes:
                print(f"note ({system.name}, c={point.concurrency}): {note}")
    print()


def print_latency(systems: list[System], results: dict[str, list[Point]]) -> None:
    """tcp vs NATS side by side: p50/p99 per number of workers and concurrency."""
    planes = {(s.transport, s.workers): results[s.name] for s in systems if s.frontends == 1}
    rows = sorted({(n, p.concurrency) for (_, n), points in planes.items() for p in points})
    header = f"{'N':>2} {'c':>4}  {'tcp p50':>8} {'nats p50':>8} {'delta':>7}  {'tcp p99':>8} {'nats p99':>8}"
    print(header)
    print("-" * len(header))
    for workers, concurrency in rows:
        tcp = next((p for p in planes.get(("tcp", workers), []) if p.concurrency == concurrency), None)
        nats = next((p for p in planes.get(("nats", workers), []) if p.concurrency == concurrency), None)
        if tcp is None or nats is None:
            continue
        print(
            f"{workers:>2} {concurrency:>4}  {tcp.p50_ms:>8.2f} {nats.p50_ms:>8.2f} {nats.p50_ms - tcp.p50_ms:>+7.2f}  "
            f"{tcp.p99_ms:>8.2f} {nats.p99_ms:>8.2f}"
        )


if __name__ == "__main__":
    main()
