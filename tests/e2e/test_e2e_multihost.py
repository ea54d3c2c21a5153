"""Several hosts, built from network namespaces: etcd on one, a frontend on another, a worker on each of two more.

Each worker binds 0.0.0.0 and advertises its own LAN address (one with ``--advertise-host``,
one with ``DYN_ADVERTISE_HOST``); a closed-loop tritonclient load runs on the frontend's host.
Requests reach both workers; one worker's cable is unplugged (its switch port goes down: no
process is told) and the frontend's heartbeats move the traffic to the other within the
liveness bound; plugged back, it takes traffic again. The figures are printed and written
to ``multihost-figures.txt`` in the test's temp dir.

Needs root (``ip netns``), etcd and Triton: skips without them, fails under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import (
    MODEL_REPO,
    START_TIMEOUT,
    Cluster,
    Proc,
    http_get,
    wait_until,
    worker_requests,
)
from dynamo_triton.testing.etcd import EtcdNotInstalled, etcd_binary
from dynamo_triton.testing.netns import Host, Network, netns_unavailable, network

pytestmark = pytest.mark.slow

ETCD_PORT = 2379
GRPC_PORT, HTTP_PORT = 8787, 8000
WORKER_PORT, SYSTEM_PORT = 9100, 8081
HEARTBEAT = 1.0  # --transport-heartbeat: a worker silent this long is routed around
LIVENESS_BOUND = 2.0 * HEARTBEAT + 1.0  # detection takes 1-2 heartbeats; 1 s for a busy 2-core machine
CUT = 4.0  # seconds the cable stays unplugged
CONCURRENCY = 8
DEADLINE = 10.0  # each request's client deadline (longer than the cut: what the victim had read may finish)
LEASE_TTL = 15.0  # longer than the cut: only the heartbeats may notice it, the cards stay


def _require(reason: str | None) -> None:
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the multi-host test must run in CI, but: {reason}")
        pytest.skip(reason)


@pytest.fixture
def lan(require_triton: None) -> Iterator[Network]:
    _require(netns_unavailable())
    try:
        etcd_binary()
    except EtcdNotInstalled as exc:
        _require(str(exc))
    with network("store", "frontend", "worker1", "worker2") as built:
        yield built


#: Settings of the caller's environment that would change what the processes do.
_FOREIGN = ("DYN_STORE_KV", "DYN_NAMESPACE", "DYN_FILE_KV", "ETCD_ENDPOINTS", "DYN_TRANSPORT_TOKEN",
            "DYN_ADVERTISE_HOST", "DYNTRITON_TCP_ADVERTISE_HOST")  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _FOREIGN}
    return {**env, "DYN_LOG": "info", **extra}


def _etcd(store: Host, tmp: Path) -> Proc:
    """etcd serving clients on the store host's LAN address (and its loopback)."""
    client = f"http://{store.address}:{ETCD_PORT}"
    peer = "http://127.0.0.1:2380"
    return store.start(
        [etcd_binary(), "--name", "store", "--data-dir", str(tmp / "etcd-data"),
         "--listen-client-urls", f"{client},http://127.0.0.1:{ETCD_PORT}", "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"store={peer}",
         "--log-level", "warn"],
        tmp / "etcd.log",
    )  # fmt: skip


def _dyntriton(cluster: Cluster, host: Host, etcd: str, command: str, *args: str, **env: str) -> Proc:
    """``dyntriton COMMAND --store-kv etcd --etcd-endpoints ETCD ARGS`` on ``host``, listed in ``cluster``."""
    argv = [sys.executable, "-m", "dynamo_triton", command, "--store-kv", "etcd", "--etcd-endpoints", etcd, *args]
    proc = host.start(argv, cluster.tmp / f"{command}-{host.name}.log", _env(**env))
    cluster.procs.append(proc)
    return proc


def _served(host: Host) -> float:
    """The worker's dyntriton_worker_requests_total for identity, read on its host."""
    return host.call(worker_requests, SYSTEM_PORT, "identity", timeout=10)


def test_workers_on_two_hosts_share_the_load_lose_their_link_and_come_back(lan: Network, tmp_path: Path) -> None:
    store, front, victim, survivor = lan["store"], lan["frontend"], lan["worker1"], lan["worker2"]
    # The network starts and stops every process; the Cluster only gathers their logs for failures.
    cluster = Cluster(tmp_path, store="etcd")
    cluster.procs.append(_etcd(store, tmp_path))
    etcd = f"http://{store.address}:{ETCD_PORT}"
    wait_until(lambda: front.connectable(store.address, ETCD_PORT), 20, "etcd, from the frontend's host", cluster)

    worker = ("--model-repository", str(MODEL_REPO), "--model", "identity", "--worker-host", "0.0.0.0",
              "--worker-port", str(WORKER_PORT), "--system-host", "0.0.0.0", "--system-port", str(SYSTEM_PORT),
              "--lease-ttl", str(LEASE_TTL))  # fmt: skip
    workers = [
        _dyntriton(cluster, victim, etcd, "worker", *worker, "--advertise-host", victim.address),
        _dyntriton(cluster, survivor, etcd, "worker", *worker, DYN_ADVERTISE_HOST=survivor.address),
    ]
    _dyntriton(cluster, front, etcd, "frontend", "--grpc-host", "0.0.0.0", "--grpc-port", str(GRPC_PORT),
               "--http-port", str(HTTP_PORT), "--transport-heartbeat", str(HEARTBEAT))  # fmt: skip
    for host in (victim, survivor):
        wait_until(
            lambda h=host: h.call(http_get, SYSTEM_PORT, "/health")[0] == 200,
            START_TIMEOUT,
            f"the worker on {host.name} to be healthy",
            cluster,
        )
    # Each card names the worker's own LAN address, not 0.0.0.0 or what the host name resolves to
    # (the worker prints the address it published once its cards are in the store).
    for proc, host in zip(workers, (victim, survivor), strict=True):
        published = f"at tcp://{host.address}:{WORKER_PORT}"
        wait_until(lambda p=proc, a=published: a in p.output(), 30, f"{host.name} to say {published!r}", cluster)
    wait_until(
        lambda: front.call(http_get, HTTP_PORT, "/v2/models/identity/ready")[0] == 200,
        60,
        "identity ready on the frontend",
        cluster,
    )

    url = f"127.0.0.1:{GRPC_PORT}"
    with front.load(url, tmp_path / "load.log", concurrency=CONCURRENCY, deadline=DEADLINE) as load:
        load.wait_for(ok=300, timeout=60)
        wait_until(lambda: min(_served(victim), _served(survivor)) > 0, 20, "requests on both workers", cluster)
        victim_before = _served(victim)

        cut_at = time.monotonic()
        victim.cut()
        try:
            moved = _served(survivor)
            wait_until(lambda: time.monotonic() - cut_at >= CUT, CUT + 5, "the cut to last")
            assert _served(survivor) >= moved + 100, f"the survivor took no traffic during the cut: {load.report()}"
            victim_cut = _served(victim)  # read on the victim's host: its loopback still works
        finally:
            victim.restore()
        restored_at = time.monotonic()
        wait_until(lambda: _served(victim) > victim_cut, 30, "the restored worker to serve again", cluster)
        back_after = time.monotonic() - restored_at
        wait_until(lambda: _served(victim) >= victim_cut + 100, 20, "the restored worker's share", cluster)
        load.stop()

    stall = load.longest_stall(cut_at, restored_at)
    moved_after = stall[1] - cut_at
    ok_during_cut = load.ok_at(restored_at) - load.ok_at(cut_at)
    figures = (
        f"concurrency {CONCURRENCY}, heartbeat {HEARTBEAT:g} s, cut {restored_at - cut_at:.2f} s: "
        f"traffic moved {moved_after:.2f} s after the cut (no answer {stall[0] - cut_at:.2f}-"
        f"{stall[1] - cut_at:.2f} s after it; 20 ms samples); {ok_during_cut} ok during the cut; the victim's "
        f"counter read {victim_before:g} just before the cut, +{victim_cut - victim_before:g} at its end (what was "
        f"in flight), moved again {back_after:.2f} s after the link was restored; load: {load.report()}"
    )
    print("\n" + figures)
    (tmp_path / "multihost-figures.txt").write_text(figures + "\n")

    assert load.longest_gap < LIVENESS_BOUND, figures
    # The longest stall's end is when traffic moved, if it stalled at all: with admission control the
    # victim's slots fill with the requests it holds and new ones go to the survivor at once, and the
    # longest "stall" is then a 20 ms sample of noise anywhere in the cut.
    if stall[1] - stall[0] > 0.2:
        assert moved_after < LIVENESS_BOUND, figures
    # Only what the victim had read when its cable went may fail: at most one request per caller.
    assert set(load.failures) <= {"UNAVAILABLE"}, figures
    assert load.hung + sum(load.failures.values()) <= CONCURRENCY, figures
    assert all(proc.alive() for proc in cluster.procs), cluster.logs()


def test_advertise_host_takes_a_host_not_an_address_with_a_port() -> None:
    def refusal(*args: str) -> str:
        argv = [sys.executable, "-m", "dynamo_triton", "worker", "--store-kv", "mem", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())
        assert done.returncode == 2, done
        return done.stderr

    text = refusal("--advertise-host", "10.0.0.7:9000")
    assert "give the host only (10.0.0.7)" in text and "--worker-port" in text, text
    assert "not a host name or IP address" in refusal("--advertise-host", "tcp://10.0.0.7")
