"""Admission control through `dyntriton serve`: past capacity nothing runs for a caller who gave up.

A `busy` model (20 ms per request, one execution instance, never checks for cancellation) gets
bursts far beyond what it can serve before the callers' deadlines. What must hold, whatever the
machine's speed: every call ends with a correct answer, RESOURCE_EXHAUSTED (refused at once) or
DEADLINE_EXCEEDED (expired while it waited, never sent); Triton executes only the answered
requests plus at most the requests in flight when the others expired (no dead work); REST refuses
with 503 and Retry-After; a cancelled call gives its slot to the next one at once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.cluster import MODEL_REPO, Cluster, http_get, model_ready, wait_until

pytestmark = pytest.mark.slow

BUSY_CONFIG = """name: "busy"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ -1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
BUSY_MODEL = '''"""busy: OUTPUT0 = INPUT0 after 20 ms; never checks for cancellation."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(0.02)
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
'''
DELAYQ_CONFIG = """name: "delayq"
backend: "python"
max_batch_size: 1
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
input [
  { name: "INPUT0", data_type: TYPE_INT32, dims: [ -1 ] },
  { name: "DELAY_MS", data_type: TYPE_UINT32, dims: [ 1 ] }
]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ -1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: Requests in flight the busy model's worker takes (one execution, one waiting in Triton).
BUSY_SLOTS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[Cluster, str, int]]:
    """One in-process `serve` of `busy` and `delay` (admission control at its defaults)."""
    tmp = tmp_path_factory.mktemp("admission")
    repo = tmp / "repo"
    (repo / "busy" / "1").mkdir(parents=True)
    (repo / "busy" / "config.pbtxt").write_text(BUSY_CONFIG)
    (repo / "busy" / "1" / "model.py").write_text(BUSY_MODEL)
    shutil.copytree(MODEL_REPO / "delay", repo / "delay")
    shutil.copytree(MODEL_REPO / "delay", repo / "delayq")
    (repo / "delayq" / "config.pbtxt").write_text(DELAYQ_CONFIG)
    env = dict(os.environ, DYN_FILE_KV=str(tmp / "kv"))
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, store="mem", env=env, model_repo=repo)
    try:
        proc, url = cluster.serve("busy", "delay", "delayq")
        wait_until(lambda: all(model_ready(url, m) for m in ("busy", "delay", "delayq")), 180, "serve", cluster)
        http_port = int(proc.argv[proc.argv.index("--http-port") + 1])
        yield cluster, url, http_port
    finally:
        cluster.stop()


def busy_request(index: int) -> tuple[bytes, bytes]:
    data = np.arange(index, index + 4, dtype=np.int32).tobytes()
    request = service_pb2.ModelInferRequest(model_name="busy")
    tensor = request.inputs.add(name="INPUT0", datatype="INT32")
    tensor.shape.append(4)
    request.raw_input_contents.append(data)
    return request.SerializeToString(), data


async def burst(url: str, count: int, deadline: float) -> Counter[str]:
    """``count`` calls at once, each with ``deadline``; their outcomes (a wrong answer fails the test)."""
    async with grpc.aio.insecure_channel(url) as channel:
        rpc = channel.unary_unary(_INFER, request_serializer=None, response_deserializer=None)

        async def one(index: int) -> str:
            payload, data = busy_request(index)
            try:
                answer = await rpc(payload, timeout=deadline)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            assert service_pb2.ModelInferResponse.FromString(answer).raw_output_contents[0] == data
            return "OK"

        return Counter(await asyncio.gather(*(one(index) for index in range(count))))


def executed(url: str, model: str) -> int:
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))
    finally:
        client.close()


def test_past_capacity_only_answered_requests_run_and_the_rest_is_refused_or_expires(
    served: tuple[Cluster, str, int],
) -> None:
    _, url, _ = served
    before = executed(url, "busy")
    first = asyncio.run(burst(url, 60, 0.4))  # 60 x 20 ms of work, 0.4 s to do it
    second = asyncio.run(burst(url, 60, 0.4))  # the service time is known now: refused at once
    outcomes = first + second
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, outcomes
    assert outcomes["OK"] > 0, outcomes
    assert second["RESOURCE_EXHAUSTED"] > 0, second
    # No dead work: Triton ran the answered requests, plus at most those in flight when the rest expired.
    wait_until(lambda: executed(url, "busy") - before >= outcomes["OK"], 10, "statistics")
    ran = executed(url, "busy") - before
    # (A loaded 2-core host may stall a request that had time when it was sent: allow a slotful more.)
    assert ran - outcomes["OK"] <= 4 * BUSY_SLOTS, (ran, outcomes)


def delay_inputs(ms: int, batched: bool = False) -> list[grpcclient.InferInput]:
    """Inputs of the `delay` model (``batched``: with the batch dimension of `delayq`)."""
    shape = [1, 2] if batched else [2]
    values = grpcclient.InferInput("INPUT0", shape, "INT32")
    values.set_data_from_numpy(np.array([ms, 7], dtype=np.int32).reshape(shape))
    delay = grpcclient.InferInput("DELAY_MS", [1, 1] if batched else [1], "UINT32")
    delay.set_data_from_numpy(np.array([ms], dtype=np.uint32).reshape([1, 1] if batched else [1]))
    return [values, delay]


def test_the_models_max_queue_size_refuses_at_once_on_grpc_and_rest(served: tuple[Cluster, str, int]) -> None:
    """`delayq` sets Triton's max_queue_size 1: one call sent (Triton's queue holds no more before it
    starts), one waiting in the frontend, the next refused at once, as Triton refuses it."""
    import urllib.error
    import urllib.request

    _, url, http_port = served
    client = grpcclient.InferenceServerClient(url)
    held = []
    try:
        for _ in range(2):
            held.append(client.async_infer("delayq", delay_inputs(20_000, True), callback=lambda *_, **__: None))
        wait_until(lambda: queued(http_port, "delayq") == 1, 10, "one call running and one waiting")
        with pytest.raises(InferenceServerException) as refused:
            client.infer("delayq", delay_inputs(0, True), client_timeout=10)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "Exceeds maximum queue size" in str(refused.value)
        body = (
            b'{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"INT32","data":[0,7]},'
            b'{"name":"DELAY_MS","shape":[1,1],"datatype":"UINT32","data":[0]}]}'
        )
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v2/models/delayq/infer", data=body)
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 503
        assert int(answer.value.headers["Retry-After"]) >= 1
        assert "Exceeds maximum queue size" in answer.value.read().decode()
    finally:
        for call in held:
            call.cancel()
        client.close()


def test_cancelled_calls_free_their_slots_for_the_next(served: tuple[Cluster, str, int]) -> None:
    """The waiting call runs once the calls ahead are cancelled, well before they would have ended (20 s)."""
    _, url, http_port = served
    client = grpcclient.InferenceServerClient(url)
    long_calls = []
    try:
        # `delay` has two execution instances and no batching: 4 slots. Fill them for 20 s each.
        for _ in range(4):
            long_calls.append(client.async_infer("delay", delay_inputs(20_000), callback=lambda *_, **__: None))
        wait_until(lambda: queued(http_port, "delay") == 0 and inflight(http_port, "delay") == 4, 10, "4 in flight")
        results: list[object] = []
        waiter = threading.Thread(
            target=lambda: results.append(_infer_or_error(client, "delay", delay_inputs(0), timeout=10))
        )
        waiter.start()
        wait_until(lambda: queued(http_port, "delay") == 1, 10, "the fifth call waiting for a slot")
        for call in long_calls:  # frees the frontend's slots and Triton's instances (the model sees the cancel)
            call.cancel()
        waiter.join(30)
        assert results and not isinstance(results[0], Exception), [str(r) for r in results]
    finally:
        for call in long_calls:
            call.cancel()
        client.close()


def _infer_or_error(
    client: grpcclient.InferenceServerClient, model: str, inputs: list[grpcclient.InferInput], timeout: float
) -> object:
    try:
        return client.infer(model, inputs, client_timeout=timeout)
    except Exception as exc:
        return exc


def _gauge(http_port: int, name: str, model: str) -> float:
    _, text = http_get(http_port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def queued(http_port: int, model: str) -> float:
    return _gauge(http_port, "dyntriton_frontend_queued_requests", model)


def inflight(http_port: int, model: str) -> float:
    return _gauge(http_port, "dyntriton_frontend_inflight_requests", model)
