#!/usr/bin/env python3
"""Server CPU per request and throughput under h2load: Triton direct vs dyntriton, one run, ratios.

A Python load generator is slower than Triton, so unary gRPC load comes from ``h2load``
(Debian ``nghttp2-client``): a C HTTP/2 client sending one pre-serialized gRPC frame
(``\\x00`` + 4-byte big-endian length + ``ModelInferRequest``) per call, ``-c C -m 1`` for
closed-loop concurrency C. Each system gets the same load on the no-batching python
identity model; one real call through tritonclient checks the answer first (h2load sees
only HTTP status; gRPC errors travel in trailers).

Systems (each started on 127.0.0.1 free ports, one after the other):

- ``triton direct``: the ``tritonserver`` binary of the Triton the backend embeds;
- ``floor``: a grpc.aio server on uvloop answering each request with a ready-made identity response of
  its size, no parse, no routing, no Triton (benchmarks/noop_grpc_server.py): what receiving and
  sending these bytes costs a Python process, the floor a frontend cannot beat;
- ``serve mem``: ``dyntriton serve --store-kv mem`` (frontend and worker in one process);
- ``serve``: ``dyntriton serve`` (a frontend and one worker process, tcp request plane, file store);
- ``serve general``: the same with the worker's C fast path off (``DYNTRITON_FAST_PATH=0``);
- ``serve 2 frontends``: the same with ``--frontends 2`` (two frontend processes sharing the port),
  with ``--max-connection-age 0``: h2load does not reconnect after a GOAWAY (its clients stop).

CPU per request is the utime + stime of the system's whole process tree (Triton's python
stubs included) over the requests h2load completed in the measured window; ``split`` divides it
by process role: ``fe`` the frontend process(es) (``serve`` itself, extra frontends), ``wk`` the
worker processes (their Python and Triton's threads), ``stub`` Triton's python backend stubs,
``srv`` the ``tritonserver`` process.

    python benchmarks/bench_h2load.py [--seconds 5] [--only "triton direct,serve"]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamo_triton.testing.cluster import MODEL_REPO, free_port, model_ready, running, wait_until
from dynamo_triton.testing.tritonserver import run_tritonserver

SCENARIOS = [("INT32[16]", 16, (1, 8, 32)), ("1 MiB", 1024 * 1024 // 4, (1, 8))]
PATH = "/inference.GRPCInferenceService/ModelInfer"
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Running:
    """A system under test: its gRPC url and the pid at the root of its process tree."""

    url: str
    pid: int


@dataclass(frozen=True)
class Point:
    """One measured load point; ``split`` is CPU µs per request by process role."""

    rps: float
    mean_ms: float
    done: int
    failed: int
    cpu_us: float
    split: dict[str, float]


def _role(pid: int) -> str:
    """``stub``, ``wk`` (a dyntriton worker), ``srv`` (tritonserver) or ``fe`` (anything else: frontends)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "fe"
    text = b" ".join(argv)
    if b"triton_python_backend_stub" in text:
        return "stub"
    if b"tritonserver" in argv[0]:
        return "srv"
    return "wk" if b"worker" in argv[3:5] else "fe"


def tree_cpu_split(root: int) -> dict[str, float]:
    """utime + stime of ``root`` and every live descendant, summed by :func:`_role`."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    members, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in members]
        members.update(children)
        frontier.extend(children)
    split: dict[str, float] = {}
    for pid in members:
        role = _role(pid)
        split[role] = split.get(role, 0.0) + times.get(pid, 0.0)
    return split


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and every live descendant."""
    return sum(tree_cpu_split(root).values())


def grpc_frame(elements: int) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, elements])
    request.raw_input_contents.append(np.arange(elements, dtype=np.int32).tobytes())
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def check_one_call(url: str, elements: int) -> None:
    """A real call: h2load only sees HTTP status, so prove the answer is right first."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        values = np.arange(elements, dtype=np.int32).reshape(1, -1)
        tensor = grpcclient.InferInput("INPUT0", list(values.shape), "INT32")
        tensor.set_data_from_numpy(values)
        result = client.infer("identity", [tensor])
        output = result.as_numpy("OUTPUT0")
        if output is not None and not np.array_equal(output, values):
            raise SystemExit(f"{url}: identity answered wrong data")
    finally:
        client.close()


def h2load(url: str, frame: Path, concurrency: int, seconds: float, pid: int) -> Point:
    argv = ["h2load", "-c", str(concurrency), "-m", "1", "-D", str(max(1, round(seconds))), "--warm-up-time", "1"]
    argv += ["-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv += [f"http://{url}{PATH}"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Count CPU over the measured window only (after the warm-up second).
    time.sleep(1.0)
    cpu_before = tree_cpu_split(pid)
    out, _ = process.communicate(timeout=seconds + 60)
    cpu_after = tree_cpu_split(pid)
    split = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    cpu = sum(split.values())
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    timing = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not finished or not requests or not timing:
        raise SystemExit(f"could not read h2load's output:\n{out}")
    done = int(requests.group(1))
    per_request = {role: value / max(done, 1) * 1e6 for role, value in split.items()}
    rps, mean_ms, failed = float(finished.group(2)), _ms(timing.group(1)), int(requests.group(3))
    return Point(rps, mean_ms, done, failed, cpu / max(done, 1) * 1e6, per_request)


def _ms(text: str) -> float:
    """h2load's ``850us`` / ``1.23ms`` / ``1.5s`` in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unknown time unit in {text!r}")


@contextmanager
def triton_direct(tmp: Path) -> Iterator[Running]:
    with run_tritonserver(MODEL_REPO, ["identity"], tmp=tmp, extra_args=["--log-info=false"]) as server:
        pid = _pid_listening(int(server.grpc_url.rsplit(":", 1)[1]))
        yield Running(server.grpc_url, pid)


def _pid_listening(port: int) -> int:
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    found = re.search(r"pid=(\d+)", out)
    if not found:
        raise SystemExit(f"no process listens on port {port}: {out!r}")
    return int(found.group(1))


@contextmanager
def floor(tmp: Path) -> Iterator[Running]:
    port = free_port()
    script = Path(__file__).with_name("noop_grpc_server.py")
    sizes = [str(elements) for _, elements, _ in SCENARIOS]
    with running([sys.executable, str(script), str(port), *sizes], dict(os.environ), tmp / "noop.log") as proc:
        url = f"127.0.0.1:{port}"
        wait_until(lambda: "ready" in (tmp / "noop.log").read_text(), 30, "the floor grpc server")
        yield Running(url, proc.pid)


def _serve(*extra: str, env_extra: dict[str, str] | None = None) -> Callable[[Path], Iterator[Running]]:
    @contextmanager
    def start(tmp: Path) -> Iterator[Running]:
        port = free_port()
        env = {**os.environ, "DYN_FILE_KV": str(tmp / f"kv-{port}"), **(env_extra or {})}
        argv = [sys.executable, "-m", "dynamo_triton", "serve", "--model", "identity"]
        argv += ["--model-repository", str(MODEL_REPO), "--grpc-host", "127.0.0.1", "--grpc-port", str(port)]
        argv += ["--http-port", str(free_port()), "--system-port", "0", *extra]
        with running(argv, env, tmp / f"serve-{port}.log") as proc:
            url = f"127.0.0.1:{port}"
            wait_until(lambda: model_ready(url, "identity"), 180, f"dyntriton serve {' '.join(extra)}")
            yield Running(url, proc.pid)

    return start


SYSTEMS: dict[str, Callable[[Path], Iterator[Running]]] = {
    "triton direct": triton_direct,
    "floor": floor,
    "serve mem": _serve("--store-kv", "mem"),
    "serve": _serve(),
    # the worker's C fast path off: every request through the general (Python-built) path
    "serve general": _serve(env_extra={"DYNTRITON_FAST_PATH": "0"}),
    "serve 2 frontends": _serve("--frontends", "2", "--max-connection-age", "0"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point (after 1 s warm-up)")
    parser.add_argument("--only", default="", help="comma-separated systems to run (default: all)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: install it with `apt-get install nghttp2-client` (Debian/Ubuntu)")
    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(SYSTEMS)
    table: dict[str, dict[tuple[str, int], Point]] = {}
    with tempfile.TemporaryDirectory(prefix="dyntriton-h2load-") as tmp_name:
        tmp = Path(tmp_name)
        frames = {}
        for label, elements, _ in SCENARIOS:
            frames[label] = tmp / f"frame-{elements}.bin"
            frames[label].write_bytes(grpc_frame(elements))
        for name in names:
            with SYSTEMS[name](tmp) as running:
                for label, elements, concurrencies in SCENARIOS:
                    if name != "floor":  # the floor answers a fixed response, not the request's data
                        check_one_call(running.url, elements)
                    for concurrency in concurrencies:
                        point = h2load(running.url, frames[label], concurrency, args.seconds, running.pid)
                        table.setdefault(name, {})[(label, concurrency)] = point
            print(f"# measured {name}", file=sys.stderr, flush=True)
    base = table.get("triton direct")
    header = f"{'load':<10} {'c':>3}  {'system':<18} {'req/s':>8} {'mean ms':>8} {'ratio':>6} "
    header += f"{'CPU us/req':>10} {'failed':>6}  split (CPU us/req by process)"
    print(header)
    print("-" * len(header))
    for label, _, concurrencies in SCENARIOS:
        for concurrency in concurrencies:
            for name in names:
                point = table[name][(label, concurrency)]
                ratio = point.rps / base[(label, concurrency)].rps if base else float("nan")
                split = " ".join(f"{role} {value:.0f}" for role, value in sorted(point.split.items()) if value)
                print(
                    f"{label:<10} {concurrency:>3}  {name:<18} {point.rps:>8.0f} {point.mean_ms:>8.2f} "
                    f"{ratio:>6.2f} {point.cpu_us:>10.0f} {point.failed:>6}  {split}"
                )
            print()


if __name__ == "__main__":
    main()
