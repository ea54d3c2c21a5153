"""Hosts made of Linux network namespaces on one switch, for multi-host tests (root only)::

    with network("store", "frontend", "worker1") as lan:
        lan["worker1"].address                          # 10.77.0.3: every other host reaches it
        lan["worker1"].start(argv, log)                  # `ip netns exec NS argv`, own process group
        lan["worker1"].call(http_get, 8081, "/metrics")  # a function run inside the namespace
        lan["worker1"].cut(); lan["worker1"].restore()   # its cable unplugged, plugged back
        with lan["frontend"].load("127.0.0.1:8787") as load: ...  # testing.load.Load, run there

Layout: one namespace per host with ``lo`` and ``eth0`` (its address on the LAN), and one more
namespace, the switch, holding a bridge and the other end of every host's veth pair. The
machine's own namespace is never touched, so parallel runs cannot clash on addresses or
interface names; namespace names carry the pid and a random suffix. :func:`network` creates
everything and always tears it down: the processes it started stopped in reverse order
(SIGTERM, then SIGKILL of their process group), any process left in a namespace killed, the
namespaces deleted (their veths and the bridge go with them).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from dynamo_triton.testing.cluster import Proc

__all__ = ["Host", "NetnsError", "Network", "NsProc", "RemoteLoad", "netns_unavailable", "network"]

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789")


class NetnsError(RuntimeError):
    """An ``ip`` command building or tearing down the network failed (its stderr in the message)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise NetnsError(
            f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}; "
            "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and a kernel with veth and bridge"
        )
    return done


def netns_unavailable() -> str | None:
    """Why namespaces cannot be built here (for a skip message), or None when they can.

    Checks the platform, root, the ``ip`` command, and that a probe namespace can be added and deleted.
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "building hosts from network namespaces needs root (`ip netns add`); run as root, as CI does"
    if shutil.which("ip") is None:
        return "no `ip` command: install iproute2 (apt-get install iproute2)"
    probe = f"dynprobe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    _ip("netns", "del", probe, check=False)
    return None


def _enter(netns: str) -> None:
    """Move the calling thread into ``netns`` (setns: the network namespace is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into network namespace {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class NsProc(Proc):
    """A :class:`~dynamo_triton.testing.cluster.Proc` leading its own process group (session).

    ``stop`` signals the leader, waits, SIGKILLs it after ``timeout``, then SIGKILLs whatever is
    left of its process group (children that outlived it).
    """

    def start(self) -> NsProc:
        with self.log.open("ab") as handle:
            self.popen = subprocess.Popen(
                self.argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        code = super().stop(sig, timeout)
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        return code


class _Stoppable(Protocol):
    def stop(self) -> Any: ...


class Host:
    """One namespace of a :class:`Network`: a host with ``address`` on the LAN and ``lo``.

    :param name: the label given to :func:`network` (``"worker1"``).
    :param netns: the namespace's name (unique per run).
    :param address: its IPv4 address on the LAN.
    """

    def __init__(self, lan: Network, name: str, netns: str, address: str, port: str):
        self.name, self.netns, self.address = name, netns, address
        self._lan, self._port = lan, port
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"Host({self.name!r}, netns={self.netns!r}, address={self.address!r})"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host: ``ip netns exec NETNS argv...``."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def start(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> NsProc:
        """Start ``argv`` in this host, output in ``log``; the network stops it on exit if still running."""
        proc = NsProc(self.exec_argv(argv), log, dict(os.environ if env is None else env)).start()
        self._lan._owned.append(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """``fn(*args)`` run by a thread of this process that lives in this host's namespace.

        For code that opens its sockets in the calling thread (``socket``, ``urllib``, e.g.
        :func:`~dynamo_triton.testing.cluster.http_get` reaching this host's ``127.0.0.1``); not
        for gRPC clients, which connect from threads of their own (use :meth:`load` or
        :meth:`start`). Calls run one at a time; raises what ``fn`` raised, or TimeoutError.
        """
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"netns-{self.name}", initializer=_enter, initargs=(self.netns,)
            )
        return self._executor.submit(fn, *args).result(timeout)

    def connectable(self, host: str, port: int, timeout: float = 0.5) -> bool:
        """True if a TCP connection from this host to ``host:port`` is accepted."""

        def attempt() -> bool:
            with socket.socket() as sock:
                sock.settimeout(timeout)
                return sock.connect_ex((host, port)) == 0

        return self.call(attempt, timeout=timeout + 5)

    def cut(self) -> None:
        """Unplug this host's cable: its switch port goes down, ``eth0`` loses its carrier.

        Packets to and from it are dropped; connections stay open (neither side is told), as when
        a cable, a switch port or a host's network fails.
        """
        _ip("-n", self._lan.switch, "link", "set", self._port, "down")

    def restore(self) -> None:
        """Plug the cable back in: the switch port comes up and forwards at once (no STP)."""
        _ip("-n", self._lan.switch, "link", "set", self._port, "up")

    def pids(self) -> list[int]:
        """Processes whose network namespace is this host's (``ip netns pids``)."""
        return [int(pid) for pid in _ip("netns", "pids", self.netns, check=False).stdout.split()]

    def load(self, url: str, log: Path, **options: Any) -> RemoteLoad:
        """A :class:`~dynamo_triton.testing.load.Load` against ``url`` run in this host (a child process).

        ``options`` go to Load (``concurrency``, ``model``, ``deadline``); use it as a context manager.
        """
        remote = RemoteLoad(self, url, log, options)
        self._lan._owned.append(remote)
        return remote

    def _close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class Network:
    """Hosts (network namespaces) on one bridge; built and torn down by :func:`network`."""

    def __init__(self, names: Sequence[str], subnet: str = "10.77.0"):
        for name in names:
            if not name or len(name) > 12 or not set(name) <= _NAME_CHARS:
                raise ValueError(f"host name {name!r}: 1-12 characters among a-z and 0-9")
        if len(set(names)) != len(names) or not 0 < len(names) < 250:
            raise ValueError(f"host names must be distinct and fewer than 250: {list(names)}")
        prefix = f"dyn{os.getpid()}{secrets.token_hex(2)}"
        self.switch = f"{prefix}-switch"
        self.hosts: dict[str, Host] = {
            name: Host(self, name, f"{prefix}-{name}", f"{subnet}.{index + 2}", f"p{index}")
            for index, name in enumerate(names)
        }
        self._owned: list[_Stoppable] = []
        self._created: list[str] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._created.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            self._created.append(host.netns)
            # Created in the switch, its peer moved into the host: no name ever exists in the root namespace.
            veth = ["type", "veth", "peer", "name", "eth0", "netns", host.netns]
            _ip("-n", self.switch, "link", "add", host._port, *veth)
            _ip("-n", self.switch, "link", "set", host._port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def _teardown(self) -> list[str]:
        """Stop, kill, delete; returns what could not be cleaned (empty when all went well)."""
        problems: list[str] = []
        for owned in reversed(self._owned):
            try:
                owned.stop()
            except Exception as exc:  # keep tearing down
                problems.append(f"stopping {owned!r}: {exc}")
        for host in self.hosts.values():
            host._close()
        names = [name for name in self._created if name != self.switch]
        deadline = time.monotonic() + 10.0
        while True:
            left = {name: _ns_pids(name) for name in names}
            left = {name: pids for name, pids in left.items() if pids}
            if not left or time.monotonic() > deadline:
                break
            for pids in left.values():
                for pid in pids:
                    if pid != os.getpid():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)  # SIGKILL is delivered asynchronously; poll until the namespaces are empty
        if left:
            problems.append(f"processes survived SIGKILL in {left}")
        for name in reversed(self._created):
            done = _ip("netns", "del", name, check=False)
            if done.returncode != 0:
                problems.append(f"`ip netns del {name}`: {done.stderr.strip()}")
        return problems


def _ns_pids(netns: str) -> list[int]:
    return [int(pid) for pid in _ip("netns", "pids", netns, check=False).stdout.split()]


@contextlib.contextmanager
def network(*names: str, subnet: str = "10.77.0") -> Iterator[Network]:
    """Build hosts ``names`` (namespaces ``SUBNET.2``, ``.3``, ... on one /24 bridge); always tear down.

    Raises NetnsError when a namespace cannot be built (:func:`netns_unavailable` says why in
    advance) and, after a body that succeeded, when something could not be cleaned up.
    """
    lan = Network(names, subnet)
    failed = True
    try:
        lan._build()
        yield lan
        failed = False
    finally:
        problems = lan._teardown()
        if problems and not failed:
            raise NetnsError("network teardown left things behind: " + "; ".join(problems))


class RemoteLoad:
    """:class:`~dynamo_triton.testing.load.Load` running in a host's namespace, watched from here.

    A child process (``ip netns exec``) runs Load and prints its counters every ``interval``
    seconds; ``ok``, ``hung``, ``failures``, ``longest_gap`` and ``last_ok`` mirror Load's
    (times on the same monotonic clock as this process's), ``history`` keeps ``(time, ok)``
    samples. Stop it (or leave the ``with``) to stop the load: the counters are then final.
    """

    def __init__(self, host: Host, url: str, log: Path, options: dict[str, Any], interval: float = 0.02):
        self.host, self.url, self.log = host, url, log
        self.ok = self.hung = 0
        self.failures: dict[str, int] = {}
        self.longest_gap = self.last_ok = 0.0
        self.history: list[tuple[float, int]] = []
        self.final_report = ""
        self._options = {"url": url, "interval": interval, **options}
        self._updated = threading.Condition()
        self._popen: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RemoteLoad({self.url!r} in {self.host.name})"

    def __enter__(self) -> RemoteLoad:
        code = "import sys; from dynamo_triton.testing.netns import _load_child; _load_child(sys.argv[1])"
        with self.log.open("ab") as errors:
            self._popen = subprocess.Popen(
                self.host.exec_argv([sys.executable, "-c", code, json.dumps(self._options)]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
        self._reader = threading.Thread(target=self._read, name=f"remote-load-{self.host.name}", daemon=True)
        self._reader.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _read(self) -> None:
        assert self._popen is not None and self._popen.stdout is not None
        for line in self._popen.stdout:
            try:
                sample = json.loads(line)
            except ValueError:
                continue
            with self._updated:
                self.ok, self.hung = sample["ok"], sample["hung"]
                self.failures, self.longest_gap, self.last_ok = sample["failures"], sample["gap"], sample["last_ok"]
                self.history.append((sample["t"], self.ok))
                self.final_report = sample.get("report", self.final_report)
                self._updated.notify_all()

    def stop(self) -> None:
        """Stop the load (the child ends its requests in flight, each bounded by its deadline), then the child."""
        if self._popen is None:
            return
        deadline = float(self._options.get("deadline", 10.0)) + 15.0
        with contextlib.suppress(OSError):
            if self._popen.stdin is not None:
                self._popen.stdin.close()  # EOF: the child's signal to stop
        try:
            self._popen.wait(deadline)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, signal.SIGKILL)
            self._popen.wait()
        if self._reader is not None:
            self._reader.join(5)

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait_for(self, *, ok: int, timeout: float) -> None:
        """Block until ``ok`` more requests succeeded; AssertionError with the report after ``timeout``."""
        target = self.ok + ok
        deadline = time.monotonic() + timeout
        with self._updated:
            while self.ok < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive():
                    why = "" if self.alive() else f" (the load process exited: {self.log.read_text()[-2000:]})"
                    raise AssertionError(f"{ok} requests did not succeed within {timeout:g} s{why}: {self.report()}")
                self._updated.wait(min(remaining, 0.5))

    def ok_at(self, moment: float) -> int:
        """Requests that had succeeded by ``moment`` (the last sample at or before it)."""
        count = 0
        for when, ok in list(self.history):
            if when > moment:
                break
            count = ok
        return count

    def longest_stall(self, start: float, end: float) -> tuple[float, float]:
        """``(began, ended)`` of the longest stretch within [start, end] with no request succeeding.

        From the samples: exact to one sampling interval. A stall still going at ``end`` ends there.
        """
        samples = [(when, ok) for when, ok in list(self.history) if when <= end]
        best = (start, start)
        began, previous = start, None
        for when, ok in samples:
            if previous is not None and ok != previous:
                if when >= start and when - max(began, start) > best[1] - best[0]:
                    best = (max(began, start), when)
                began = when
            previous = ok
        if end - max(began, start) > best[1] - best[0]:
            best = (max(began, start), end)
        return best

    def report(self) -> str:
        """Load's report line (the child's own once it stopped)."""
        if self.final_report:
            return self.final_report
        return (
            f"ok={self.ok} hung={self.hung} failures={self.failures} "
            f"longest gap between successes {self.longest_gap:.2f} s"
        )


def _load_child(options_json: str) -> None:
    """The child of :class:`RemoteLoad`: run Load, print its counters as JSON lines until stdin closes."""
    from dynamo_triton.testing.load import Load

    options = json.loads(options_json)
    url, interval = options.pop("url"), options.pop("interval")
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    def sample(load: Load, **extra: Any) -> None:
        line = {
            "t": time.monotonic(),
            "ok": load.ok,
            "hung": load.hung,
            "failures": dict(collections.Counter(load.failures)),
            "gap": load.longest_gap,
            "last_ok": load.last_ok,
        }
        print(json.dumps({**line, **extra}), flush=True)

    load = Load(url, **options)
    with load:
        while not done.wait(interval):
            sample(load)
    sample(load, report=load.report())
