"""Fault: a standalone worker SIGKILLed leaves nothing behind: no python-backend stub, no /dev/shm region.

The stub reaper (dyntriton_backend_triton/reaper.py) must end the worker's stubs within 5 s
of its death (measured: tens of milliseconds) and unlink their shared-memory regions,
while the dead worker is still an unreaped zombie (the worst case: the stub's own
parent check cannot see it die then).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, http_get, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, require_triton: None) -> Iterator[Cluster]:
    env = {**os.environ, "DYN_FILE_KV": str(tmp_path / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    c = Cluster(tmp_path, env=env)
    try:
        yield c
    finally:
        c.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def test_no_stub_or_shm_region_outlives_a_sigkilled_worker(cluster: Cluster) -> None:
    from dyntriton_backend_triton.reaper import find_stubs

    worker, system_port = cluster.worker("identity")
    wait_until(lambda: http_get(system_port, "/health")[0] == 200, START_TIMEOUT, "the worker", cluster)
    assert worker.popen is not None
    pid = worker.popen.pid
    stubs = find_stubs(pid)
    assert stubs, "the identity model runs in a python-backend stub"
    regions = [Path("/dev/shm") / stub.region for stub in stubs]
    assert all(region.exists() for region in regions)

    os.kill(pid, signal.SIGKILL)  # not reaped until the end: the dead worker stays a zombie meanwhile
    killed = time.monotonic()
    deadline = killed + 5.0
    while any(_alive(stub.pid) for stub in stubs) and time.monotonic() < deadline:
        time.sleep(0.01)
    stubs_gone = time.monotonic() - killed
    while any(region.exists() for region in regions) and time.monotonic() < deadline:
        time.sleep(0.01)
    regions_gone = time.monotonic() - killed
    print(f"\nstubs gone {stubs_gone:.3f} s, /dev/shm regions gone {regions_gone:.3f} s after SIGKILL")
    assert not [stub.pid for stub in stubs if _alive(stub.pid)], f"stubs alive 5 s after SIGKILL\n{cluster.logs()}"
    assert not [str(r) for r in regions if r.exists()], f"regions left 5 s after SIGKILL\n{cluster.logs()}"
    assert worker.popen.wait(5) == -signal.SIGKILL
    # The reaper writes its line after the kill: wait for it rather than read the log at once.
    wait_until(lambda: "killed 1 python backend stub(s)" in worker.output(), 10, "the reaper's line", cluster)
