"""`dyntriton status` and `top` against a real `serve --workers 2 --model identity` under load.

One serve (file store) and one closed-loop tritonclient load are shared by the module. `top`
runs in a real pseudo-terminal (a tmux server of its own, 80x24). A frozen worker is a real
SIGSTOP (SIGCONT in a finally); an unreachable system port is `status` run in a network
namespace of its own (`unshare -n`): the store is the same folder, the workers' ports are out
of reach, as from a host behind a firewall.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, model_ready
from dynamo_triton.testing.load import Load

pytestmark = pytest.mark.slow

DYNTRITON = [sys.executable, "-m", "dynamo_triton"]


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()``'s first truthy result, polled until ``timeout`` seconds pass (then AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


@dataclass
class Served:
    cluster: Cluster
    url: str
    load: Load

    def run(self, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *DYNTRITON, *args], env=self.cluster.env, capture_output=True, text=True, timeout=60
        )

    def status(self, *args: str) -> dict[str, Any]:
        done = self.run("status", "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def workers(document: dict[str, Any], model: str = "identity") -> list[dict[str, Any]]:
    return next((m["workers"] for m in document["models"] if m["name"] == model), [])


def all_busy(document: dict[str, Any]) -> bool:
    found = workers(document)
    return len(found) == 2 and all(w["load"] and w["load"]["requests_per_second"] > 0 for w in found)


def ready(url: str) -> bool:
    try:
        return model_ready(url, "identity")
    except Exception:  # not listening yet
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("status")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info", "COLUMNS": "80"}
    env.pop("DYN_STORE_KV", None)
    # The lease outlives the freeze (slow `status` runs on a busy host included): the frozen worker
    # stays listed, as unresponsive, instead of leaving with its cards.
    cluster = Cluster(tmp, env=env, lease_ttl=30.0)
    try:
        proc, url = cluster.serve("identity", extra=("--workers", "2"))
        deadline = time.monotonic() + START_TIMEOUT
        while not ready(url):
            assert proc.alive() and time.monotonic() < deadline, cluster.logs()
            time.sleep(0.2)
        with Load(url, concurrency=4) as load:
            load.wait_for(ok=50, timeout=60)
            served = Served(cluster, url, load)
            poll(lambda: all_busy(served.status()), 30, "both workers to report a request rate")
            yield served
    finally:
        cluster.stop()


def test_status_lists_identity_with_two_serving_workers_and_their_rates(served: Served) -> None:
    done = served.run("status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("namespace dynamo-serve-"), done.stdout  # a serve given none has its own
    assert lines[1].startswith("identity") and "python" in lines[1] and "Triton 2.51.0" in lines[1]
    ids = [w["instance_id"][:8] for w in workers(served.status())]
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ids}
    assert set(rows) == set(ids), done.stdout
    for row in rows.values():
        # WORKER ADDRESS PID/HOST STATE INFL REQ/S P50 P99 ERR
        assert row[3] == "serving" and float(row[5]) > 0 and row[6].endswith("ms"), done.stdout
    assert all(len(line) <= 80 for line in lines), done.stdout
    assert "frontends" in done.stdout and served.url in done.stdout


def test_status_json_holds_the_same(served: Served) -> None:
    document = served.status()
    assert document["schema"] == "dyntriton.status/v1" and document["store"] == "file"
    [model] = [m for m in document["models"] if m["name"] == "identity"]
    assert model["versions"] == ["1"] and len(model["workers"]) == 2
    pids = set()
    for worker in model["workers"]:
        assert worker["state"] == "serving" and worker["system"]["status"] == "ok"
        assert worker["local"] and worker["server_version"] == "2.51.0"
        assert worker["config"]["backend"] == "python" and worker["config"]["max_batch_size"] == 8
        assert worker["config"]["sequence"] is False and worker["config"]["decoupled"] is False
        load = worker["load"]
        assert load["requests_per_second"] > 0 and load["requests_total"] >= load["requests"] > 0
        assert 0 < load["p50_ms"] <= load["p99_ms"] and load["window_seconds"] <= 61
        pids.add(worker["pid"])
    assert len(pids) == 2 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    [frontend] = document["frontends"]
    assert frontend["grpc"] == served.url and not frontend["stale"] and frontend["instances"] == 2
    poll(lambda: served.status()["frontends"][0]["models"]["identity"]["requests_per_second"] > 0, 10, "frontend rate")
    assert served.status("--model", "identity")["models"][0]["name"] == "identity"
    [namespace] = document["namespaces"]
    assert model["namespace"] == namespace and frontend["namespace"] == namespace
    assert [m["name"] for m in served.status("--namespace", namespace)["models"]] == ["identity"]
    assert served.status("--namespace", "dynamo")["models"] == []  # the shared default: nobody there
    missing = served.run("status", "--model", "nope")
    assert missing.returncode == 1 and "no worker serves nope" in missing.stderr


def test_an_unreachable_system_port_is_shown_not_fatal(served: Served) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare (util-linux) for a network namespace of its own")
    done = served.run("status", "--json", prefix=("unshare", "--net"))
    assert done.returncode == 0, done.stderr
    found = workers(json.loads(done.stdout))
    assert len(found) == 2
    for worker in found:
        assert worker["state"] == "serving" and worker["load"] is None
        assert worker["system"]["status"] == "unreachable" and worker["system"]["error"]
    human = served.run("status", prefix=("unshare", "--net"))
    notes = [line for line in human.stdout.splitlines() if " unreachable: " in line and "http://127.0.0.1:" in line]
    assert human.returncode == 0 and len(notes) == 2, human.stdout


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    """``tmux -L <own socket>``: a tmux server of this test's own, killed at the end."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    command = ["tmux", "-L", f"dyntriton-top-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
    try:
        yield command
    finally:
        subprocess.run([*command, "kill-server"], capture_output=True, timeout=10)


@dataclass
class Top:
    """``dyntriton top`` in a tmux pane of 80x24; what it printed, its exit code and the terminal after it."""

    tmux: list[str]
    exit_file: Path
    stty_file: Path

    def screen(self) -> str:
        return subprocess.run([*self.tmux, "capture-pane", "-p"], capture_output=True, text=True, timeout=10).stdout

    def keys(self, key: str) -> None:
        subprocess.run([*self.tmux, "send-keys", key], check=True, timeout=10)

    def exit_code(self) -> str:
        poll(self.stty_file.exists, 10, "top to exit")
        return self.exit_file.read_text().strip()

    def terminal_restored(self) -> bool:
        """Line editing and echo are back (top's cbreak mode undone)."""
        flags = self.stty_file.read_text().split()
        return "icanon" in flags and "echo" in flags


def start_top(served: Served, tmux: list[str], tmp_path: Path) -> Top:
    top = Top(tmux, tmp_path / "top-exit", tmp_path / "stty")
    environment = " ".join(f"{k}={shlex.quote(v)}" for k, v in served.cluster.env.items() if k.startswith("DYN_"))
    command = " ".join(shlex.quote(part) for part in [*DYNTRITON, "top"])
    script = (
        f"env {environment} LANG=C.UTF-8 {command}; echo $? > {shlex.quote(str(top.exit_file))}; "
        f"stty -a > {shlex.quote(str(top.stty_file))}.tmp; mv {shlex.quote(str(top.stty_file))}.tmp "
        f"{shlex.quote(str(top.stty_file))}"
    )
    subprocess.run([*tmux, "-u", "new-session", "-d", "-x", "80", "-y", "24", script], check=True, timeout=10)
    poll(lambda: "dyntriton top" in top.screen(), 30, "top to draw its first frame")
    return top


def test_top_shows_both_workers_and_a_rate_and_quits_on_q(served: Served, tmux: list[str], tmp_path: Path) -> None:
    ids = [w["instance_id"][:8] for w in workers(served.status())]
    top = start_top(served, tmux, tmp_path)

    def shows_both_busy() -> bool:
        text = top.screen()
        rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0] in ids]
        # WORKER STATE REQ/S TREND INFL P50 P99 ERR PID/HOST
        return "identity" in text and len(rows) == 2 and all(row[2] not in {"0", "-"} for row in rows)

    poll(shows_both_busy, 3, "identity, both workers and a non-zero rate on top's screen")
    assert all(len(line) <= 80 for line in top.screen().splitlines())
    top.keys("q")
    assert top.exit_code() == "0" and top.terminal_restored()


def test_top_quits_on_ctrl_c(served: Served, tmux: list[str], tmp_path: Path) -> None:
    top = start_top(served, tmux, tmp_path)
    top.keys("C-c")
    assert top.exit_code() == "0" and top.terminal_restored()


def test_a_frozen_worker_is_shown_unresponsive(served: Served) -> None:
    """Last in the module: a worker frozen under load may die on SIGCONT (Triton's python backend,
    docs/operations.md; serve then restarts it), so nothing after this test relies on it."""
    frozen, other = workers(served.status())
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        document = served.status()  # its system port accepts, never answers: one probe timeout
        states = {w["instance_id"]: w for w in workers(document)}
        assert states[frozen["instance_id"]]["state"] == "unresponsive", states
        assert states[frozen["instance_id"]]["system"]["status"] == "timeout"
        assert states[other["instance_id"]]["state"] == "serving"
        # The frontend's transport misses its heartbeats too (1 s) and says so in its card.
        short, frontend = frozen["instance_id"][:8], document["frontends"][0]["frontend_id"][:8]

        def reported() -> str:
            text = " ".join(served.run("status").stdout.split())  # lines may wrap at 80 columns
            return text if f"{short}: unresponsive to frontend {frontend}" in text else ""

        text = poll(reported, 10, "the frontend's card to report the frozen worker")
        assert f"{short}: http://127.0.0.1:" in text and "connected, but no answer within 1 s" in text
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
