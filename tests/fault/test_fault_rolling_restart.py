"""Frontend restarts under load with real processes: ``serve --frontends 2`` on shared ports (SO_REUSEPORT).

SIGHUP to ``serve`` replaces its extra frontend process: the new one serves on the shared ports
before the old one drains, so no request may fail (today a few may end CANCELLED: see the xfail).
A frontend process that crashes (SIGKILL) is restarted by ``serve``; only the requests it had in
flight may fail, and none may hang. Load is tritonclient at concurrency 8, one connection per
client (``dynamo_triton.testing.load``); counts are printed for the record.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import (
    START_TIMEOUT,
    Cluster,
    Proc,
    listening_addresses,
    model_ready,
    process_tree,
    wait_until,
)
from dynamo_triton.testing.load import Load

pytestmark = pytest.mark.slow

CONCURRENCY = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[Cluster, Proc, str]]:
    tmp = tmp_path_factory.mktemp("rolling")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    for name in ("DYN_STORE_KV", "DYN_NAMESPACE", "DYN_TRANSPORT_TOKEN"):
        env.pop(name, None)
    cluster = Cluster(tmp, env=env, lease_ttl=5.0)
    try:
        serve, url = cluster.serve("identity", extra=("--frontends", "2"))
        wait_until(lambda: "Ctrl-C stops" in serve.output(), START_TIMEOUT, "serve to start", cluster)
        wait_until(lambda: model_ready(url, "identity"), 30, "identity to be ready", cluster)
        yield cluster, serve, url
    finally:
        cluster.stop()


def extra_frontends(serve: Proc) -> set[int]:
    """Pids of serve's frontend child processes (its own frontend runs inside serve)."""
    assert serve.popen is not None
    found = set()
    for pid in process_tree(serve.popen.pid) - {serve.popen.pid}:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dynamo_triton" in argv and b"frontend" in argv:
            found.add(pid)
    return found


def grpc_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_sighup_replaces_the_extra_frontend_without_losing_a_request(served: tuple[Cluster, Proc, str]) -> None:
    cluster, serve, url = served
    assert serve.popen is not None
    (old,) = extra_frontends(serve)
    replaced = serve.output().count(" replaced: pid ")
    with Load(url, concurrency=CONCURRENCY, deadline=10.0, own_connections=True) as load:
        load.wait_for(ok=300, timeout=60)
        hup = time.monotonic()
        serve.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: serve.output().count(" replaced: pid ") > replaced, 60, "the replacement", cluster)
        took = time.monotonic() - hup
        (new,) = extra_frontends(serve)
        assert new != old
        assert ("127.0.0.1", grpc_port(url)) in listening_addresses(new)
        load.wait_for(ok=300, timeout=30)  # the clients of the drained process moved on
    report = f"SIGHUP rolling restart at c={CONCURRENCY}: replaced in {took:.2f} s; {load.report()}"
    print(report)
    assert load.hung == 0, report
    assert serve.alive(), serve.output()[-3000:]
    assert set(load.failures) <= {"CANCELLED"}, report
    if load.failures:
        # grpc.aio's server.stop(grace) cancels the calls that reached the server but were not yet
        # picked up by its serving loop (grpc core "zombifies" them at shutdown) before clients see
        # its GOAWAY; only a GOAWAY sent while the old process still serves (max_connection_age,
        # with its listening socket already closed) avoids that, in the kserve-grpc frontend plugin.
        pytest.xfail(f"the draining frontend's gRPC server cancelled calls it had not started: {report}")


def test_a_crashed_frontend_is_restarted_by_serve(served: tuple[Cluster, Proc, str]) -> None:
    cluster, serve, url = served
    (old,) = extra_frontends(serve)
    restarted = serve.output().count("frontend 1 restarted as pid")
    with Load(url, concurrency=CONCURRENCY, deadline=10.0, own_connections=True) as load:
        load.wait_for(ok=300, timeout=60)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: serve.output().count("frontend 1 restarted as pid") > restarted, 30, "the restart", cluster)
        wait_until(
            lambda: any(("127.0.0.1", grpc_port(url)) in listening_addresses(pid) for pid in extra_frontends(serve)),
            30,
            "the restarted frontend to listen",
            cluster,
        )
        back = time.monotonic() - killed
        load.wait_for(ok=300, timeout=30)
    report = f"SIGKILL of a frontend process at c={CONCURRENCY}: listening again after {back:.2f} s; {load.report()}"
    print(report)
    # Only what the killed process had in flight may fail (UNAVAILABLE: its connections reset).
    assert load.hung == 0, report
    assert set(load.failures) <= {"UNAVAILABLE"}, report
    assert sum(load.failures.values()) <= CONCURRENCY, report
    assert back < 10, report
    assert serve.alive(), serve.output()[-3000:]
