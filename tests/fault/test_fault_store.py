"""A wiped etcd under a live cluster, with real processes: the frontend re-lists, workers register again.

etcd is stopped, its data folder deleted and a fresh etcd started on the same URL (its revision
starts again from 1 and it knows no lease). The frontend's watch cannot resume there: it must
re-list and say so; the old worker must notice its lease is gone and put its card again; a worker
started after the wipe must get traffic within 10 s of registering. Load runs throughout
(tritonclient, concurrency 4) and none of it may fail: until the old worker puts its card
again, the frontend keeps routing to it. Workers keep the default lease TTL (10 s), so the old
worker's next keep-alive (which finds its lease gone) often comes after the frontend re-listed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import (
    START_TIMEOUT,
    Cluster,
    http_get,
    model_ready,
    wait_until,
    worker_requests,
)
from dynamo_triton.testing.etcd import EtcdNotInstalled
from dynamo_triton.testing.etcd_node import EtcdNode
from dynamo_triton.testing.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.etcd]


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdNode]:
    try:
        node = EtcdNode(tmp_path / "etcd")
    except EtcdNotInstalled as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"etcd tests must run in CI, but: {exc}")
        pytest.skip(str(exc))
    with node:
        yield node


@pytest.fixture
def cluster(tmp_path: Path, etcd: EtcdNode, require_triton: None) -> Iterator[Cluster]:
    env = {**os.environ, "ETCD_ENDPOINTS": etcd.url, "DYN_LOG": "info"}
    for name in ("DYN_STORE_KV", "DYN_NAMESPACE", "DYN_TRANSPORT_TOKEN"):
        env.pop(name, None)
    cluster = Cluster(tmp_path, store="etcd", env=env, lease_ttl=10.0)
    try:
        yield cluster
    finally:
        cluster.stop()


def first_times(checks: dict[str, Callable[[], bool]], timeout: float, cluster: Cluster) -> dict[str, float]:
    """Poll every check (every 50 ms) until all held once; returns when each first held (monotonic time)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(checks):
        for name, check in checks.items():
            if name not in seen:
                with contextlib.suppress(Exception):
                    if check():
                        seen[name] = time.monotonic()
        if time.monotonic() > deadline:
            missing = sorted(checks.keys() - seen.keys())
            raise AssertionError(f"timed out after {timeout:g} s waiting for {missing}\n{cluster.logs()}")
        time.sleep(0.05)
    return seen


def test_a_wiped_etcd_is_re_listed_and_a_new_worker_gets_traffic(cluster: Cluster, etcd: EtcdNode) -> None:
    frontend, url, _ = cluster.frontend()
    old, old_port = cluster.worker("identity")
    wait_until(lambda: http_get(old_port, "/health")[0] == 200, START_TIMEOUT, "the first worker", cluster)
    wait_until(lambda: model_ready(url, "identity"), 30, "identity to be ready", cluster)

    with Load(url, concurrency=4, deadline=10.0) as load:
        load.wait_for(ok=50, timeout=30)
        etcd.wipe()
        wiped = time.monotonic()
        served_before = worker_requests(old_port, "identity")
        new, new_port = cluster.worker("identity")
        times = first_times(
            {
                "frontend re-listed": lambda: "re-listed dyntriton/v1/dynamo/models/" in frontend.output(),
                "old worker registered again": lambda: "registered again" in old.output(),
                "old worker served after that": lambda: (
                    "registered again" in old.output() and worker_requests(old_port, "identity") > served_before
                ),
                "new worker registered": lambda: http_get(new_port, "/health")[0] == 200,
                "new worker served": lambda: worker_requests(new_port, "identity") > 0,
            },
            START_TIMEOUT,
            cluster,
        )
        load.wait_for(ok=50, timeout=10)
    new_traffic = times["new worker served"] - times["new worker registered"]
    report = (
        "etcd wiped: "
        + ", ".join(f"{name} after {times[name] - wiped:.2f} s" for name in sorted(times, key=times.__getitem__))
        + f"; the new worker got traffic {new_traffic:.2f} s after it registered; load (c=4): {load.report()}"
    )
    print(report)

    assert new_traffic < 10, report
    relist_lines = [line for line in frontend.output().splitlines() if "re-listed dyntriton/v1/dynamo" in line]
    assert relist_lines and "WARNING" in relist_lines[0], relist_lines
    # Cards the re-list lacks stay routable until their workers put them again: no request is lost.
    assert load.hung == 0 and load.failures == {}, report
    assert frontend.alive() and old.alive() and new.alive()
