"""Faults of the request plane with real processes: a frozen worker under load, unauthenticated frontends.

One module-wide cluster on the file store: a frontend and two identity workers with a 30 s
lease (so only the transport's heartbeats can notice a 15 s freeze), and, in namespace
``secure``, a worker with mutual TLS and a token. Progress is measured by polling (requests
completed, log lines, counters), never by sleeping; the 15 s SIGSTOP is the scenario itself.
The frozen-worker scenario runs again on NATS alone (request plane and store, 6 s freeze).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.certs import TestCerts, make_certs
from dynamo_triton.testing.cluster import (
    MODEL_REPO,
    START_TIMEOUT,
    Cluster,
    Proc,
    free_port,
    http_get,
    model_ready,
    process_tree,
    wait_until,
    worker_requests,
)

FREEZE = 15.0  # seconds the worker stays stopped
DEADLINE = 5.0  # every request's client deadline
CONCURRENCY = 8
TOKEN = "fault-suite-token"


def tls_args(certs: TestCerts, side: str) -> list[str]:
    """The request-plane TLS options of the worker (``server``) or the frontend (``client``)."""
    cert, key = (certs.server_cert, certs.server_key) if side == "server" else (certs.client_cert, certs.client_key)
    return [f"--transport-tls-cert={cert}", f"--transport-tls-key={key}", f"--transport-tls-ca={certs.ca}"]


@dataclass
class Workers:
    cluster: Cluster
    url: str
    procs: list[Proc]
    system_ports: list[int]
    secure: Proc
    secure_port: int
    certs: TestCerts
    frontends: dict[str, str] = field(default_factory=dict)


def frontend(cluster: Cluster, *args: str) -> str:
    """A frontend process with ``args`` added; returns its gRPC url."""
    port = free_port()
    cluster.command(
        "frontend", "--store-kv", "file", "--grpc-host", "127.0.0.1", "--grpc-port", str(port),
        "--http-port", str(free_port()), *args,
    )  # fmt: skip
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[Workers]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for test certificates")
    tmp = tmp_path_factory.mktemp("fault")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    for name in ("DYN_STORE_KV", "DYN_NAMESPACE", "DYN_TRANSPORT_TOKEN"):
        env.pop(name, None)
    cluster = Cluster(tmp, env=env, lease_ttl=30.0)
    certs = make_certs(tmp / "certs")
    try:
        url = frontend(cluster)
        started = [cluster.worker("identity") for _ in range(2)]
        secure_port, secure_system = free_port(), free_port()
        secure = cluster.command(
            "worker", "--store-kv", "file", "--namespace", "secure", "--model-repository", str(MODEL_REPO),
            "--model", "identity", "--lease-ttl", "30", "--system-port", str(secure_system),
            "--worker-port", str(secure_port), *tls_args(certs, "server"), "--transport-token", TOKEN,
        )  # fmt: skip
        for port in [*(port for _, port in started), secure_system]:
            wait_until(lambda p=port: http_get(p, "/health")[0] == 200, START_TIMEOUT, f"worker :{port}", cluster)
        wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
        yield Workers(cluster, url, [proc for proc, _ in started], [port for _, port in started], secure,
                      secure_port, certs)  # fmt: skip
    finally:
        for proc in cluster.procs:  # never leave a stopped process behind
            if proc.popen is not None:
                thaw(process_tree(proc.popen.pid))  # a dying worker's stubs may go meanwhile
        cluster.stop()


def infer(client: grpcclient.InferenceServerClient, data: np.ndarray, **kwargs: object) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return client.infer("identity", [tensor], **kwargs).as_numpy("OUTPUT0")


@dataclass
class Outcome:
    began: float
    ended: float
    status: str  # "ok", or the gRPC status name
    message: str = ""


class Load:
    """CONCURRENCY threads sending identity requests with a DEADLINE each, recording every outcome."""

    def __init__(self, url: str):
        self.url = url
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CONCURRENCY)]

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        data = np.arange(16, dtype=np.int32).reshape(1, 16)
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                try:
                    out = infer(client, data, client_timeout=DEADLINE)
                    status, message = ("ok" if np.array_equal(out, data) else "WRONG ANSWER"), ""
                except InferenceServerException as exc:
                    status, message = str(exc.status()).removeprefix("StatusCode."), exc.message() or ""
                self.outcomes.append(Outcome(began, time.monotonic(), status, message))
        finally:
            client.close()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(DEADLINE + 10)

    def ok_since(self, moment: float) -> int:
        return sum(1 for o in list(self.outcomes) if o.status == "ok" and o.ended > moment)

    def longest_gap(self, start: float, end: float) -> float:
        """Longest time within [start, end] with no request completing ok."""
        times = sorted(o.ended for o in list(self.outcomes) if o.status == "ok" and start <= o.ended <= end)
        edges = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(edges))


def freeze(proc: Proc) -> list[int]:
    """SIGSTOP a worker and every process under it (its Triton stubs): a frozen host or container."""
    assert proc.popen is not None
    pids = sorted(process_tree(proc.popen.pid))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def thaw(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _serves_again_or_died_in_triton(proc: Proc, system_port: int, served_before: float) -> bool:
    """True once the thawed worker answers again, or once it is dead of the python backend's crash."""
    if not proc.alive():
        return True
    with contextlib.suppress(OSError):
        return worker_requests(system_port, "identity") > served_before
    return False


def _died_in_triton_python_backend(proc: Proc) -> bool:
    """The worker was killed by a native crash (SIGABRT/SIGSEGV, faulthandler's report in its log).

    Triton 2.51's python backend aborts the whole process after a freeze under load (its timed
    waits on the stub expire at once on SIGCONT; ``boost::interprocess::lock_exception`` or a
    corrupted shared-memory heap): ``tritonserver`` itself dies the same way (docs/operations.md).
    A Python exception or a clean exit is not this and fails the test.
    """
    assert proc.popen is not None
    code = proc.popen.returncode
    return code in (-signal.SIGABRT, -signal.SIGSEGV) and "Fatal Python error" in proc.output()


def frozen_worker_scenario(
    url: str, victim: Proc, victim_port: int, survivor: Proc, cluster: Cluster, seconds: float
) -> str:
    """SIGSTOP ``victim`` for ``seconds`` under load at CONCURRENCY through ``url``; assert and report.

    Asserts: < 2 s without a completed request, nothing hung, only DEADLINE_EXCEEDED/UNAVAILABLE
    (at most one per caller), answers throughout the freeze, no internal address in any error, and
    the thawed worker serving again (or dead of Triton's python-backend crash, and only that).
    """
    with Load(url) as load:
        wait_until(lambda: load.ok_since(0) >= 200, 60, "load to be flowing", cluster)
        served_before = worker_requests(victim_port, "identity")
        assert served_before > 0, "round-robin should reach both workers before the freeze"
        stopped_at = time.monotonic()
        pids = freeze(victim)
        try:
            wait_until(lambda: time.monotonic() - stopped_at >= seconds, seconds + 5, "the freeze to last")
        finally:
            thaw(pids)
        thawed_at = time.monotonic()
        # Back in routing once it answers: its own counter moves again.
        wait_until(
            lambda: _serves_again_or_died_in_triton(victim, victim_port, served_before),
            10,
            "the thawed worker to serve again",
            cluster,
        )
        back_after = time.monotonic() - thawed_at
        wait_until(lambda: load.ok_since(time.monotonic() - 1) > 0, 10, "answers after the thaw", cluster)
        if not victim.alive():  # the survivor alone carries the load on
            moment = time.monotonic()
            wait_until(lambda: load.ok_since(moment) >= 100, 30, "answers without the crashed worker", cluster)
    assert not any(thread.is_alive() for thread in load.threads), "a request hung"
    assert survivor.alive(), f"the worker that was not frozen died\n{cluster.logs()}"
    if not victim.alive():
        assert _died_in_triton_python_backend(victim), f"the thawed worker died\n{cluster.logs()}"
        back_after = float("nan")

    gap = load.longest_gap(stopped_at, thawed_at + 1.0)
    during = [o for o in load.outcomes if o.began >= stopped_at - DEADLINE and o.began <= thawed_at]
    statuses = Counter(o.status for o in during)
    hung = [o for o in load.outcomes if o.ended - o.began > DEADLINE + 1.0]
    ok_frozen = sum(1 for o in load.outcomes if o.status == "ok" and stopped_at < o.ended < thawed_at)
    report = (
        f"{seconds:g} s freeze: longest gap without an answer {gap:.2f} s; {ok_frozen} ok during the freeze; "
        f"outcomes around it {dict(statuses)}; hung {len(hung)}; back {back_after:.2f} s after SIGCONT"
        + ("" if victim.alive() else " (it died of Triton's python-backend crash after the thaw)")
    )
    print(report)

    assert gap < 2.0, report
    assert not hung, report
    failures = {status for status in statuses if status != "ok"}
    assert failures <= {"DEADLINE_EXCEEDED", "UNAVAILABLE"}, report
    # Only requests the frozen worker had already read may fail: at most one per caller, and never twice.
    assert statuses["DEADLINE_EXCEEDED"] + statuses["UNAVAILABLE"] <= CONCURRENCY, report
    assert ok_frozen >= 100 * (seconds / 15.0), report
    for outcome in load.outcomes:
        for internal in ("tcp://", "nats:", "127.0.0.1"):
            assert internal not in outcome.message, outcome.message
    deadline_texts = {o.message for o in load.outcomes if o.status == "DEADLINE_EXCEEDED"}
    assert all("Deadline" in text or "identity" in text for text in deadline_texts), deadline_texts
    return report


@pytest.mark.slow
def test_a_frozen_worker_under_load_is_routed_around_and_comes_back(workers: Workers) -> None:
    """15 s SIGSTOP of one of two tcp workers at concurrency 8: < 2 s without an answer, nothing hung."""
    report = frozen_worker_scenario(
        workers.url, workers.procs[1], workers.system_ports[1], workers.procs[0], workers.cluster, FREEZE
    )
    (workers.cluster.tmp / "freeze-figures.txt").write_text(report + "\n")


@pytest.mark.slow
def test_a_frozen_nats_worker_is_routed_around_and_comes_back(
    tmp_path: Path, nats_server: str, require_triton: None
) -> None:
    """The same on the NATS request plane and store (6 s freeze): the nats client's heartbeats notice it."""
    env = {**os.environ, "NATS_SERVER": nats_server, "DYN_NATS_KV_BUCKET": f"freeze-{uuid.uuid4().hex[:8]}"}
    env["DYN_LOG"] = "info"
    for name in ("DYN_STORE_KV", "DYN_NAMESPACE", "DYN_TRANSPORT_TOKEN"):
        env.pop(name, None)
    cluster = Cluster(tmp_path, store="nats", env=env, lease_ttl=30.0)
    try:
        _, url, _ = cluster.frontend()
        started = [cluster.worker("identity", extra=("--transport", "nats")) for _ in range(2)]
        for _, port in started:
            wait_until(lambda p=port: http_get(p, "/health")[0] == 200, START_TIMEOUT, f"worker :{port}", cluster)
        wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
        (victim, victim_port), (survivor, _) = started[1], started[0]
        frozen_worker_scenario(url, victim, victim_port, survivor, cluster, 6.0)
    finally:
        for proc in cluster.procs:
            if proc.popen is not None:
                thaw(process_tree(proc.popen.pid))
        cluster.stop()


def _refusals(proc: Proc, mark: str) -> list[str]:
    return [line for line in proc.output().splitlines() if "refused tcp connection" in line and mark in line]


def _unavailable(url: str) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            infer(client, np.arange(4, dtype=np.int32).reshape(1, 4), client_timeout=20)
    finally:
        client.close()
    assert str(caught.value.status()) == "StatusCode.UNAVAILABLE", caught.value
    return caught.value.message() or ""


def test_a_tls_worker_serves_a_frontend_with_its_certificate_and_token(workers: Workers) -> None:
    url = frontend(workers.cluster, "--namespace", "secure", *tls_args(workers.certs, "client"),
                   "--transport-token", TOKEN)  # fmt: skip
    wait_until(lambda: model_ready(url, "identity"), 60, "the secure frontend", workers.cluster)
    client = grpcclient.InferenceServerClient(url)
    try:
        data = np.arange(32, dtype=np.int32).reshape(1, 32)
        for _ in range(5):
            np.testing.assert_array_equal(infer(client, data, client_timeout=20), data)
    finally:
        client.close()


def test_a_tls_worker_refuses_a_plain_connection(workers: Workers) -> None:
    before = len(_refusals(workers.secure, "plain (non-TLS) connection"))
    # A stranger on the port: plain bytes, no certificate.
    with socket.create_connection(("127.0.0.1", workers.secure_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        while sock.recv(4096):
            pass  # the worker ends the connection
    wait_until(
        lambda: len(_refusals(workers.secure, "plain (non-TLS) connection")) == before + 1,
        10,
        "the worker's refusal line",
        workers.cluster,
    )
    # A frontend without TLS: its clients get UNAVAILABLE saying the worker wants TLS.
    url = frontend(workers.cluster, "--namespace", "secure", "--transport-token", TOKEN)
    wait_until(lambda: model_ready(url, "identity"), 60, "the plain frontend", workers.cluster)
    message = _unavailable(url)
    assert "TLS" in message and "--transport-tls" in message and "tcp://" not in message, message
    assert len(_refusals(workers.secure, "plain (non-TLS) connection")) >= before + 2


def test_a_wrong_or_missing_token_is_refused(workers: Workers) -> None:
    wrong = frontend(workers.cluster, "--namespace", "secure", *tls_args(workers.certs, "client"),
                     "--transport-token", "not-the-token")  # fmt: skip
    wait_until(lambda: model_ready(wrong, "identity"), 60, "the wrong-token frontend", workers.cluster)
    message = _unavailable(wrong)
    assert "wrong token" in message and "--transport-token" in message and "tcp://" not in message, message
    wait_until(lambda: _refusals(workers.secure, "wrong token"), 10, "the wrong-token line", workers.cluster)

    missing = frontend(workers.cluster, "--namespace", "secure", *tls_args(workers.certs, "client"))
    wait_until(lambda: model_ready(missing, "identity"), 60, "the token-less frontend", workers.cluster)
    message = _unavailable(missing)
    assert "requires a token" in message and "--transport-token" in message, message
    wait_until(lambda: _refusals(workers.secure, "no token"), 10, "the no-token line", workers.cluster)
