#!/usr/bin/env python3
"""Past capacity: goodput, failure latency and recovery under an open-loop spike, side by side, one run.

The model (``busy``, written to a temp repository) takes 20 ms per request on one execution
instance and never checks for cancellation, like most real models: one Triton serves at most
50 req/s. Load is **open loop** (Poisson arrivals at a fixed rate, whatever the answers do), every
call carries a gRPC deadline (1 s by default):

0. ``steady``: half the system's capacity for 10 s (nothing should be shed, latency as without
   admission control);
1. ``spike``: 4x its capacity for 20 s;
2. ``after``: right after the spike, half its capacity for 5 s.

Systems, one after the other on free 127.0.0.1 ports:

- ``triton``: ``tritonserver`` direct (capacity 50 req/s);
- ``serve``: ``dyntriton serve --workers 2`` (capacity 100 req/s), admission control on (default);
- ``serve -1``: the same with ``--max-inflight -1`` (admission control off: every request forwarded,
  the behaviour before it existed).

Columns: ``0.5x fail`` the steady phase's failed calls, then its ``p50``/``p99`` latency in ms;
``goodput`` is the answers that arrived in time during the spike, over the capacity times its
length; ``shed`` the calls refused at once (RESOURCE_EXHAUSTED); ``late`` the calls that failed with
DEADLINE_EXCEEDED; ``fail max`` the slowest failure's latency in ms and ``>dl+.1`` the failures
answered later than the deadline + 100 ms (the goal: none, and refusals within milliseconds);
``wrong`` answers whose output differs from the input; ``after ok`` the after-phase calls answered,
then their ``p99`` in ms; ``rss MB`` the frontend's resident memory growth over the run (serve only).

    python benchmarks/bench_overload.py [--steady 10] [--spike 20] [--after 5] [--deadline 1.0] [--only serve]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from dynamo_triton.testing.cluster import free_port, running, wait_until
from dynamo_triton.testing.tritonserver import run_tritonserver

MODEL = "busy"
SERVICE_MS = 20
CONFIG = f"""name: "{MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0", data_type: TYPE_INT32, dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_INT32, dims: [ -1 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""
MODEL_PY = f'''"""busy: OUTPUT0 = INPUT0 after {SERVICE_MS} ms of work; never checks for cancellation."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep({SERVICE_MS / 1000})
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
'''
_INFER = "/inference.GRPCInferenceService/ModelInfer"


def write_repository(root: Path) -> Path:
    """The ``busy`` model's repository under ``root``."""
    folder = root / "repo" / MODEL
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG)
    (folder / "1" / "model.py").write_text(MODEL_PY)
    return root / "repo"


def request_bytes(index: int) -> tuple[bytes, bytes]:
    """A serialized ModelInferRequest carrying ``index`` in its tensor, and the tensor's bytes."""
    from tritonclient.grpc import service_pb2

    data = np.array([index, index + 1, index + 2, index + 3], dtype=np.int32).tobytes()
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="INPUT0", datatype="INT32")
    tensor.shape.append(4)
    request.raw_input_contents.append(data)
    return request.SerializeToString(), data


@dataclass
class Call:
    phase: str
    start: float
    end: float = 0.0
    status: str = ""
    wrong: bool = False


@dataclass
class Outcome:
    calls: list[Call] = field(default_factory=list)
    rss_growth_mb: float | None = None


async def open_loop(url: str, phases: list[tuple[str, float, float]], deadline: float) -> list[Call]:
    """Poisson arrivals at each phase's rate (req/s) for its length (s); every call with ``deadline``."""
    from tritonclient.grpc import service_pb2

    channels = [grpc.aio.insecure_channel(url) for _ in range(8)]
    calls: list[Call] = []
    tasks: set[asyncio.Task[None]] = set()
    rng = random.Random(7)

    async def one(channel: grpc.aio.Channel, call: Call, index: int) -> None:
        payload, data = request_bytes(index)
        rpc = channel.unary_unary(_INFER, request_serializer=None, response_deserializer=None)
        try:
            answer = await rpc(payload, timeout=deadline)
            response = service_pb2.ModelInferResponse.FromString(answer)
            call.wrong = response.raw_output_contents[0] != data
            call.status = "OK"
        except grpc.aio.AioRpcError as exc:
            call.status = exc.code().name
        call.end = time.monotonic()

    try:
        for channel in channels:
            await channel.channel_ready()
        index = 0
        for phase, rate, seconds in phases:
            begin = time.monotonic()
            next_at = begin
            while next_at < begin + seconds:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                call = Call(phase, time.monotonic())
                calls.append(call)
                task = asyncio.create_task(one(channels[index % len(channels)], call, index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
                next_at += rng.expovariate(rate)
        if tasks:
            await asyncio.wait(tasks, timeout=deadline + 30)
    finally:
        for channel in channels:
            await channel.close()
    return calls


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(name: str, capacity: float, spike: float, deadline: float, outcome: Outcome) -> str:
    during = [call for call in outcome.calls if call.phase == "spike"]
    after = [call for call in outcome.calls if call.phase == "after"]
    in_time = [c for c in during if c.status == "OK" and c.end - c.start <= deadline]
    failures = [c for c in outcome.calls if c.status != "OK"]
    shed = sum(c.status == "RESOURCE_EXHAUSTED" for c in outcome.calls)
    late = sum(c.status == "DEADLINE_EXCEEDED" for c in outcome.calls)
    fail_max = max(((c.end - c.start) * 1000 for c in failures), default=0.0)
    wrong = sum(c.wrong for c in outcome.calls)
    after_ok = [c for c in after if c.status == "OK"]
    after_ms = sorted((c.end - c.start) * 1000 for c in after_ok)
    p99 = after_ms[min(len(after_ms) - 1, int(len(after_ms) * 0.99))] if after_ms else float("nan")
    shed_ms = [(c.end - c.start) * 1000 for c in outcome.calls if c.status == "RESOURCE_EXHAUSTED"]
    rss = "-" if outcome.rss_growth_mb is None else f"{outcome.rss_growth_mb:+.1f}"
    steady = [c for c in outcome.calls if c.phase == "steady"]
    steady_failed = sum(c.status != "OK" for c in steady)
    steady_ms = sorted((c.end - c.start) * 1000 for c in steady if c.status == "OK")
    steady_p50 = statistics.median(steady_ms) if steady_ms else float("nan")
    steady_p99 = steady_ms[min(len(steady_ms) - 1, int(len(steady_ms) * 0.99))] if steady_ms else float("nan")
    over = sum((c.end - c.start) > deadline + 0.1 for c in failures)
    other = collections.Counter(
        c.status for c in failures if c.status not in {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
    )
    if other:
        print(f"{name}: other failures {dict(other)}", file=sys.stderr)
    for phase in ("steady", "after"):
        failed = collections.Counter(c.status for c in outcome.calls if c.phase == phase and c.status != "OK")
        if failed:
            print(f"{name}: {phase} failures {dict(failed)}", file=sys.stderr)
    return (
        f"{name:<10} {capacity:>4.0f} {steady_failed:>5}/{len(steady):<5} {steady_p50:>6.1f} {steady_p99:>6.1f} "
        f"{len(in_time):>6}/{len(during):<6} {len(in_time) / (capacity * spike):>7.1%} "
        f"{shed:>6} {late:>6} {fail_max:>8.0f} {over:>5} {statistics.median(shed_ms) if shed_ms else 0:>8.1f} "
        f"{wrong:>5} {len(after_ok):>4}/{len(after):<4} {p99:>7.1f} {rss:>7}"
    )


@contextlib.contextmanager
def serve(tmp: Path, repository: Path, workers: int, extra: list[str]) -> Iterator[tuple[str, int]]:
    port, http_port, system_port = free_port(), free_port(), free_port()
    env = dict(os.environ, DYN_FILE_KV=str(tmp / f"kv-{port}"))
    argv = [
        sys.executable, "-m", "dynamo_triton", "serve", "--model-repository", str(repository),
        "--model", MODEL, "--workers", str(workers), "--grpc-port", str(port), "--http-port", str(http_port),
        "--system-port", str(system_port), "--namespace", f"overload-{port}", *extra,
    ]  # fmt: skip
    with running(argv, env, tmp / f"serve-{port}.log") as process:
        url = f"127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 180, f"serve on {url}")
        yield url, process.pid


def _ready(url: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_model_ready(MODEL)
    finally:
        client.close()


def run_phases(url: str, capacity: float, args: argparse.Namespace) -> list[Call]:
    phases = [
        ("steady", capacity * 0.5, args.steady),
        ("spike", capacity * args.factor, args.spike),
        ("after", capacity * 0.5, args.after),
    ]
    return asyncio.run(open_loop(url, phases, args.deadline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steady", type=float, default=10.0, help="seconds at half capacity before the spike")
    parser.add_argument("--spike", type=float, default=20.0, help="seconds of overload")
    parser.add_argument("--after", type=float, default=5.0, help="seconds at half capacity right after")
    parser.add_argument("--factor", type=float, default=4.0, help="overload as a multiple of capacity")
    parser.add_argument("--deadline", type=float, default=1.0, help="every call's deadline, s")
    parser.add_argument("--only", default="", help="comma-separated systems: triton, serve, serve -1")
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dyntriton-overload-") as scratch:
        tmp = Path(scratch)
        repository = write_repository(tmp)
        per_worker = 1000 / SERVICE_MS
        if not only or "triton" in only:
            with run_tritonserver(repository, [MODEL], tmp=tmp) as triton:
                rows.append(report("triton", per_worker, args.spike, args.deadline,
                                   Outcome(run_phases(triton.grpc_url, per_worker, args))))  # fmt: skip
        for name, extra in (("serve", []), ("serve -1", ["--max-inflight", "-1"])):
            if only and name not in only:
                continue
            with serve(tmp, repository, 2, extra) as (url, pid):
                before = rss_mb(pid)
                calls = run_phases(url, 2 * per_worker, args)
                rows.append(report(name, 2 * per_worker, args.spike, args.deadline,
                                   Outcome(calls, rss_mb(pid) - before)))  # fmt: skip
        shutil.rmtree(tmp / "repo", ignore_errors=True)
    print(
        f"\nbusy model ({SERVICE_MS} ms, 1 instance per server/worker); spike {args.factor:g}x capacity for "
        f"{args.spike:g} s, then 0.5x for {args.after:g} s; deadline {args.deadline:g} s; load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'system':<10} {'cap':>4} {'0.5x fail':>11} {'p50':>6} {'p99':>6} {'in time/sent':>13} {'goodput':>7} "
        f"{'shed':>6} {'late':>6} {'fail max':>8} {'>dl+.1':>5} {'shed p50':>8} {'wrong':>5} {'after ok':>9} "
        f"{'p99':>7} {'rss MB':>7}"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
