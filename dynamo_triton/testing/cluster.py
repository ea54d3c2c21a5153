"""Run real dyntriton processes for end-to-end tests and benchmarks.

Every process binds 127.0.0.1 on free ports, keeps its state in a temp dir and
is stopped (SIGTERM, then SIGKILL) when the owner is done with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dynamo_triton.testing.ports import free_port
from dynamo_triton.testing.processes import stop_process
from dynamo_triton.testing.wait import wait_until

__all__ = [
    "Cluster",
    "Proc",
    "free_port",
    "http_get",
    "listening_addresses",
    "model_ready",
    "process_tree",
    "running",
    "wait_until",
    "worker_requests",
]

#: The checkout whose model_repo/ the workers serve by default (an editable install).
REPO = Path(__file__).resolve().parents[2]
MODEL_REPO = REPO / "model_repo"

#: Seconds a worker may take to start Triton and load its models.
START_TIMEOUT = 120.0


@dataclass
class Proc:
    """A dyntriton child process with its log file."""

    argv: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(self.argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env)
        handle.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        if self.popen is None:
            return None
        return stop_process(self.popen, timeout, sig)


@dataclass
class Cluster:
    """Processes sharing one store; helpers to start frontends and workers."""

    tmp: Path
    store: str = "file"
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    lease_ttl: float = 2.0
    model_repo: Path = MODEL_REPO

    def _proc(self, name: str, args: list[str]) -> Proc:
        argv = [sys.executable, "-m", "dynamo_triton", *args]
        proc = Proc(argv, self.tmp / f"{name}-{len(self.procs)}.log", self.env).start()
        self.procs.append(proc)
        return proc

    def command(self, *args: str) -> Proc:
        """``dyntriton ARGS`` exactly as given (no options added), stopped with the cluster."""
        return self._proc(args[0] if args else "dyntriton", list(args))

    def frontend(self, grpc_port: int | None = None, http_port: int | None = None) -> tuple[Proc, str, int]:
        grpc_port = grpc_port or free_port()
        http_port = http_port or free_port()
        proc = self._proc(
            "frontend",
            [
                "frontend",
                "--store-kv",
                self.store,
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                str(grpc_port),
                "--http-port",
                str(http_port),
            ],
        )
        return proc, f"127.0.0.1:{grpc_port}", http_port

    def worker(self, *models: str, system_port: int | None = None, extra: tuple[str, ...] = ()) -> tuple[Proc, int]:
        """``dyntriton worker`` for ``models`` (``extra``: more options, e.g. ``--model-control explicit``)."""
        system_port = system_port or free_port()
        args = ["worker", "--store-kv", self.store, "--model-repository", str(self.model_repo)]
        for model in models:
            args += ["--model", model]
        args += ["--lease-ttl", str(self.lease_ttl), "--system-port", str(system_port), *extra]
        return self._proc("worker", args), system_port

    def serve(self, *models: str, extra: tuple[str, ...] = ()) -> tuple[Proc, str]:
        """``dyntriton serve`` for ``models`` with this cluster's store; returns it and its gRPC url."""
        grpc_port = free_port()
        args = ["serve", "--store-kv", self.store, "--model-repository", str(self.model_repo)]
        for model in models:
            args += ["--model", model]
        args += ["--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(free_port())]
        args += ["--system-port", str(free_port()), "--lease-ttl", str(self.lease_ttl), *extra]
        return self._proc("serve", args), f"127.0.0.1:{grpc_port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name} ---\n{p.output()[-4000:]}" for p in self.procs)


def model_ready(url: str, model: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_model_ready(model)
    finally:
        client.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def worker_requests(system_port: int, model: str) -> float:
    """The worker's ``dyntriton_worker_requests_total`` for ``model`` from its /metrics."""
    _, text = http_get(system_port, "/metrics")
    for line in text.splitlines():
        if line.startswith("dyntriton_worker_requests_total") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def process_tree(pid: int) -> set[int]:
    """``pid`` and every descendant of it alive now (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return tree


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """``(host, port)`` of every TCP socket listening in ``pid``'s process tree (Linux ``/proc``).

    Hosts read as ``0.0.0.0``, ``127.0.0.1``, ``::`` or ``::1`` (IPv4-mapped IPv6 addresses as IPv4).
    """
    import ipaddress

    inodes: set[str] = set()
    for member in process_tree(pid):
        for fd in Path(f"/proc/{member}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                raw, port = fields[1].split(":")
                packed = b"".join(bytes.fromhex(raw[i : i + 8])[::-1] for i in range(0, width, 8))
                address = ipaddress.ip_address(packed)
                mapped = getattr(address, "ipv4_mapped", None)  # gRPC binds 127.0.0.1 as ::ffff:127.0.0.1
                found.add((str(mapped or address), int(port, 16)))
    return found


@contextlib.contextmanager
def running(
    argv: list[str], env: dict[str, str], log: Path, *, stop_timeout: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with its output in ``log``; on exit SIGTERM it, then SIGKILL after ``stop_timeout``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        stop_process(proc, stop_timeout)
