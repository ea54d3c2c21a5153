"""End to end: sticky sequences through ``dyntriton serve --workers 2`` with real Triton and tritonclient.

One ``serve`` (file store, two worker processes, the ``simple_sequence`` model) is shared by
the module. Interleaved sequences over one ModelStreamInfer stream and over concurrent
unary calls must get every step right (``OUTPUT = INPUT + START``, ``SUM`` = running sum, kept
by the worker that saw the START); killing the worker that holds a sequence makes its next
requests fail with UNAVAILABLE naming the sequence, never answer from the other worker.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.cluster import (
    MODEL_REPO,
    START_TIMEOUT,
    Cluster,
    http_get,
    model_ready,
    wait_until,
    worker_requests,
)
from dynamo_triton.testing.tritonserver import TritonDirect

pytestmark = pytest.mark.slow

MODEL = "simple_sequence"
#: Steps per sequence: 16 sequences x 6 steps = 96 requests on one stream, more than the 8
#: sequence slots per worker, so STARTs wait in Triton's backlog behind running sequences while
#: the stream keeps reading (a narrow stream window would deadlock here; see runtime/streams.py).
STEPS = 6
WAIT = 60.0


class Serve:
    """The module's ``serve --workers 2`` and how to reach its parts."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        base = free_port_pair()
        self.system_ports = [base, base + 1]  # serve gives worker i the system port base + i
        # The last --system-port wins over the one Cluster.serve picked (which says nothing of base + 1).
        self.proc, self.url = cluster.serve(MODEL, extra=("--workers", "2", "--system-port", str(base)))

    def ready(self) -> bool:
        """True once the model is ready; raises (with the logs) if serve exited instead."""
        if not self.proc.alive():
            code = self.proc.popen.returncode if self.proc.popen else None
            raise AssertionError(f"serve exited with code {code} before {MODEL} was ready\n{self.cluster.logs()}")
        try:
            return model_ready(self.url, MODEL)
        except Exception:
            return False

    def worker_pid(self, system_port: int) -> int:
        """The pid of serve's worker child with ``system_port``."""
        assert self.proc.popen is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            wanted = [b"--system-port", str(system_port).encode()]
            if ppid == self.proc.popen.pid and any(argv[i : i + 2] == wanted for i in range(len(argv) - 1)):
                return int(entry.name)
        raise AssertionError(f"no worker child of serve with --system-port {system_port}")


def free_port_pair() -> int:
    """A port p with p and p + 1 both free now (serve's two workers take them)."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two consecutive free ports on 127.0.0.1")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("sequences")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    try:
        running = Serve(cluster)
        deadline = time.monotonic() + START_TIMEOUT
        while not running.ready():
            assert time.monotonic() < deadline, f"{MODEL} not ready within {START_TIMEOUT:g} s\n{cluster.logs()}"
            time.sleep(0.2)
        for port in running.system_ports:
            wait_until(lambda p=port: http_get(p, "/health")[0] == 200, START_TIMEOUT, f"worker :{port}", cluster)
        yield running
    finally:
        cluster.stop()


def inputs(value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full((1, 1), value, dtype=np.int32))
    return [tensor]


OUTPUTS = [grpcclient.InferRequestedOutput("OUTPUT"), grpcclient.InferRequestedOutput("SUM")]


def plan(ids: list[int | str], seed: int) -> dict[int | str, list[int]]:
    rng = np.random.default_rng(seed)
    return {sid: [int(v) for v in rng.integers(-100, 100, STEPS)] for sid in ids}


def expected(values: list[int]) -> list[tuple[int, int]]:
    """Triton's simple_sequence contract: OUTPUT = INPUT + START; SUM is the running sum."""
    return [(value + (i == 0), int(np.sum(values[: i + 1]))) for i, value in enumerate(values)]


def answer(result: grpcclient.InferResult) -> tuple[int, int]:
    return int(result.as_numpy("OUTPUT").flat[0]), int(result.as_numpy("SUM").flat[0])


def test_interleaved_sequences_over_one_stream_are_all_right(serve: Serve) -> None:
    ids: list[int | str] = [*range(1001, 1009), *(f"stream-{n}" for n in range(8))]
    values = plan(ids, seed=1)
    before = [worker_requests(port, MODEL) for port in serve.system_ports]
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(serve.url)
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), answers))
    try:
        for i in range(STEPS):
            for sid in ids:
                client.async_stream_infer(
                    MODEL,
                    inputs(values[sid][i]),
                    outputs=OUTPUTS,
                    request_id=f"{sid}|{i}",
                    sequence_id=sid,
                    sequence_start=i == 0,
                    sequence_end=i == STEPS - 1,
                )
        got: dict[int | str, list[tuple[int, int] | None]] = {sid: [None] * STEPS for sid in ids}
        for _ in range(len(ids) * STEPS):
            result, error = answers.get(timeout=WAIT)
            assert error is None, f"a step failed: {error}"
            key, index = result.get_response().id.rsplit("|", 1)
            sid = next(s for s in ids if str(s) == key)
            got[sid][int(index)] = answer(result)
    finally:
        client.stop_stream()
        client.close()
    for sid in ids:
        assert got[sid] == expected(values[sid]), f"sequence {sid!r}"
    served = [worker_requests(port, MODEL) - b for port, b in zip(serve.system_ports, before, strict=True)]
    assert sum(served) == len(ids) * STEPS
    assert all(count > 0 for count in served), f"16 sequences should spread over both workers, got {served}"


def test_interleaved_sequences_over_unary_calls_are_all_right(serve: Serve) -> None:
    ids: list[int | str] = [*range(2001, 2007), *(f"unary-{n}" for n in range(6))]
    values = plan(ids, seed=2)

    def run(sid: int | str) -> list[tuple[int, int]]:
        client = grpcclient.InferenceServerClient(serve.url)
        try:
            return [
                answer(
                    client.infer(
                        MODEL,
                        inputs(value),
                        outputs=OUTPUTS,
                        sequence_id=sid,
                        sequence_start=i == 0,
                        sequence_end=i == STEPS - 1,
                        client_timeout=WAIT,
                    )
                )
                for i, value in enumerate(values[sid])
            ]
        finally:
            client.close()

    with ThreadPoolExecutor(len(ids)) as pool:
        results = dict(zip(ids, pool.map(run, ids), strict=True))
    for sid in ids:
        assert results[sid] == expected(values[sid]), f"sequence {sid!r}"


def test_a_step_without_start_gets_tritons_error(serve: Serve) -> None:
    client = grpcclient.InferenceServerClient(serve.url)
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, inputs(1), sequence_id=424242)
    client.close()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "must specify the START flag on the first request of the sequence" in info.value.message()


def interleaved_answers(url: str, ids: list[int | str], values: dict[int | str, list[int]]) -> dict[str, object]:
    """Every answer (or error text) of the sequences ``ids``, sent step by step in turn, unary then over a stream."""
    client = grpcclient.InferenceServerClient(url)
    answers: dict[str, object] = {}
    try:
        for i in range(STEPS):
            for sid in ids:
                flags = {"sequence_id": sid, "sequence_start": i == 0, "sequence_end": i == STEPS - 1}
                answers[f"unary {sid}|{i}"] = answer(client.infer(MODEL, inputs(values[sid][i]), **flags))
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, inputs(1), sequence_id=ids[0])  # ended: Triton no longer holds it
        answers["after end"] = (info.value.status(), info.value.message())
        results: queue.Queue = queue.Queue()
        client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
        for i in range(STEPS):
            for sid in ids:
                flags = {"sequence_id": sid, "sequence_start": i == 0, "sequence_end": i == STEPS - 1}
                client.async_stream_infer(MODEL, inputs(values[sid][i]), request_id=f"{sid}|{i}", **flags)
        for _ in range(len(ids) * STEPS):
            result, error = results.get(timeout=WAIT)
            assert error is None, f"a step failed: {error}"
            answers[f"stream {result.get_response().id}"] = answer(result)
        client.stop_stream()
    finally:
        client.close()
    return answers


@pytest.mark.parametrize("triton_direct", [(MODEL_REPO, (MODEL,))], indirect=True, ids=[MODEL])
def test_the_same_answers_as_tritonserver(serve: Serve, triton_direct: TritonDirect) -> None:
    # At most 8 sequences at a time: Triton's slots for this model (max_batch_size 8, one instance);
    # a ninth START sent step by step would wait in Triton's backlog until a sequence idles out.
    ids: list[int | str] = [*range(5001, 5005), *(f"same-{n}" for n in range(4))]
    values = plan(ids, seed=3)
    ours = interleaved_answers(serve.url, ids, values)
    assert ours == interleaved_answers(triton_direct.grpc_url, ids, values)
    assert ours[f"unary {ids[0]}|0"] == expected(values[ids[0]])[0]


def test_killing_the_worker_that_holds_a_sequence_makes_it_unavailable(serve: Serve) -> None:
    """Runs last in the module: it kills a worker."""
    client = grpcclient.InferenceServerClient(serve.url)
    sid = 31337
    assert answer(client.infer(MODEL, inputs(5), outputs=OUTPUTS, sequence_id=sid, sequence_start=True)) == (6, 5)
    before = [worker_requests(port, MODEL) for port in serve.system_ports]
    assert answer(client.infer(MODEL, inputs(2), outputs=OUTPUTS, sequence_id=sid)) == (2, 7)
    after = [worker_requests(port, MODEL) for port in serve.system_ports]
    [holder] = [port for port, b, a in zip(serve.system_ports, before, after, strict=True) if a > b]
    survivor = next(port for port in serve.system_ports if port != holder)
    os.kill(serve.worker_pid(holder), signal.SIGKILL)
    survivor_before = worker_requests(survivor, MODEL)

    for _ in range(2):  # right away (card still in the store) and again (sequence remembered as lost)
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, inputs(1), outputs=OUTPUTS, sequence_id=sid, client_timeout=WAIT)
        assert info.value.status() == "StatusCode.UNAVAILABLE", info.value
        message = info.value.message()
        assert str(sid) in message and f"'{MODEL}'" in message, message
        assert "lost with its worker" in message and "sequence_start" in message, message
    assert worker_requests(survivor, MODEL) == survivor_before, "a lost sequence must not reach the other worker"

    # Restarting the sequence with START works on the surviving worker.
    assert answer(client.infer(MODEL, inputs(3), outputs=OUTPUTS, sequence_id=sid, sequence_start=True)) == (4, 3)
    assert answer(client.infer(MODEL, inputs(4), outputs=OUTPUTS, sequence_id=sid, sequence_end=True)) == (4, 7)
    client.close()
