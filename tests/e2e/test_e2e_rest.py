"""KServe v2 REST end to end: ``dyntriton serve`` with real workers, real tritonclient.http and raw HTTP.

One ``serve`` (file store, one worker) runs for the module over a model repository made of
this checkout's models plus ``every_dtype``, an identity for each of the 14 KServe dtypes.
Expected answers are Triton's own (checked against the ``tritonserver`` binary by hand: same
classification strings, same JSON of metadata; where Triton answers 500 or converts
silently, we answer 400 with what was wrong).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient

from dynamo_triton.testing.cluster import MODEL_REPO, Cluster, free_port, http_get, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.triton]

#: KServe dtype -> (Triton config type, numpy dtype of the test values)
DTYPES = {
    "BOOL": ("TYPE_BOOL", np.bool_),
    "UINT8": ("TYPE_UINT8", np.uint8),
    "UINT16": ("TYPE_UINT16", np.uint16),
    "UINT32": ("TYPE_UINT32", np.uint32),
    "UINT64": ("TYPE_UINT64", np.uint64),
    "INT8": ("TYPE_INT8", np.int8),
    "INT16": ("TYPE_INT16", np.int16),
    "INT32": ("TYPE_INT32", np.int32),
    "INT64": ("TYPE_INT64", np.int64),
    "FP16": ("TYPE_FP16", np.float16),
    "FP32": ("TYPE_FP32", np.float32),
    "FP64": ("TYPE_FP64", np.float64),
    "BF16": ("TYPE_BF16", ml_dtypes.bfloat16),
    "BYTES": ("TYPE_STRING", np.object_),
}
MAX_INPUT = 2 * 1024 * 1024

EVERY_DTYPE_MODEL = '''
"""every_dtype: each <T>_IN comes back as <T>_OUT."""
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.names = [item["name"] for item in json.loads(args["model_config"])["input"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = []
            for name in self.names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                out = name[: -len("_IN")] + "_OUT"
                if name.startswith("BF16"):  # numpy has no bfloat16: pass the buffer through DLPack
                    outputs.append(pb_utils.Tensor.from_dlpack(out, tensor.to_dlpack()))
                else:
                    outputs.append(pb_utils.Tensor(out, tensor.as_numpy()))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
'''


def _repository(root: Path) -> Path:
    root.mkdir()
    for model in ("identity", "repeat", "delay", "add_sub"):
        (root / model).symlink_to(MODEL_REPO / model, target_is_directory=True)
    model = root / "every_dtype"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(EVERY_DTYPE_MODEL)
    inputs = ", ".join(f'{{ name: "{k}_IN", data_type: {t}, dims: [ -1 ] }}' for k, (t, _) in DTYPES.items())
    outputs = ", ".join(f'{{ name: "{k}_OUT", data_type: {t}, dims: [ -1 ] }}' for k, (t, _) in DTYPES.items())
    (model / "config.pbtxt").write_text(
        f'name: "every_dtype"\nbackend: "python"\nmax_batch_size: 0\ninput [ {inputs} ]\noutput [ {outputs} ]\n'
        "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
    )
    return root


class Served:
    """The running ``serve``: its HTTP port, its worker's system port, the cluster (for logs)."""

    def __init__(self, cluster: Cluster, http_port: int, system_port: int):
        self.cluster, self.http_port, self.system_port = cluster, http_port, system_port
        self.url = f"127.0.0.1:{http_port}"

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(f"http://{self.url}{path}", data=body, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[Served]:
    import os

    tmp = tmp_path_factory.mktemp("rest")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env, model_repo=_repository(tmp / "repo"))
    http_port, system_port = free_port(), free_port()
    extra = ("--http-port", str(http_port), "--system-port", str(system_port))
    proc, _ = cluster.serve(
        *("identity", "repeat", "delay", "add_sub", "every_dtype"),
        extra=(*extra, "--http-max-input-size", str(MAX_INPUT)),
    )

    def ready() -> bool:
        try:
            return all(http_get(http_port, f"/v2/models/{m}/ready")[0] == 200 for m in ("every_dtype", "delay"))
        except OSError:  # not listening yet
            return False

    try:
        deadline = time.monotonic() + 180
        while not ready():  # a serve that exits fails at once, with its log
            if not proc.alive() or time.monotonic() > deadline:
                state = "exited" if not proc.alive() else "was not ready after 180 s"
                raise AssertionError(f"serve {state}\n{cluster.logs()}")
            time.sleep(0.1)
        yield Served(cluster, http_port, system_port)
    finally:
        cluster.stop()


def _values(datatype: str) -> np.ndarray:
    dtype = DTYPES[datatype][1]
    if datatype == "BOOL":
        return np.array([True, False, True])
    if datatype == "BYTES":
        return np.array([b"h\xc3\xa9llo", b"", b"x"], dtype=object)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, 0, info.max], dtype)
    return np.array([-1.5, 0.1, 65504.0 if datatype == "FP16" else 3.0e38], dtype)


def test_e2e_rest_every_dtype_binary_round_trip_with_tritonclient(served):
    client = httpclient.InferenceServerClient(served.url)
    try:
        inputs, outputs = [], []
        for datatype in DTYPES:
            tensor = httpclient.InferInput(f"{datatype}_IN", [3], datatype)
            tensor.set_data_from_numpy(_values(datatype), binary_data=True)
            inputs.append(tensor)
            outputs.append(httpclient.InferRequestedOutput(f"{datatype}_OUT", binary_data=True))
        result = client.infer("every_dtype", inputs, outputs=outputs, request_id="all")
        assert result.get_response()["id"] == "all"
        for datatype in DTYPES:
            got = result.as_numpy(f"{datatype}_OUT")
            assert (
                got.tobytes() == _values(datatype).tobytes()
                if datatype != "BYTES"
                else list(got) == list(_values(datatype))
            ), datatype
    finally:
        client.close()


def test_e2e_rest_every_dtype_json_round_trip(served):
    def json_values(datatype: str) -> list:
        values = _values(datatype)
        if datatype == "BYTES":
            return [item.decode() for item in values]
        return values.astype(np.float32).tolist() if datatype in ("FP16", "BF16") else values.tolist()

    body = {"inputs": [{"name": f"{d}_IN", "shape": [3], "datatype": d, "data": json_values(d)} for d in DTYPES]}
    status, _, answer = served.post("/v2/models/every_dtype/infer", json.dumps(body).encode())
    assert status == 200, answer
    outputs = {item["name"]: item for item in json.loads(answer)["outputs"]}
    for datatype in DTYPES:
        item = outputs[f"{datatype}_OUT"]
        assert (item["datatype"], item["shape"]) == (datatype, [3])
        expected = json_values(datatype)
        if datatype in ("FP32", "FP64"):
            np.testing.assert_array_equal(np.array(item["data"], DTYPES[datatype][1]), _values(datatype))
        else:
            assert item["data"] == expected, datatype


def test_e2e_rest_json_values_that_do_not_fit_are_400_not_wrapped(served):
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 99999999999]}]}
    status, _, answer = served.post("/v2/models/identity/infer", json.dumps(body).encode())
    assert status == 400
    assert "value 99999999999 is out of range for INT32" in json.loads(answer)["error"]


def test_e2e_rest_binary_1mib_and_gzip_both_ways(served):
    values = np.random.default_rng(1).integers(-(2**31), 2**31 - 1, (1, 262144), dtype=np.int32)
    client = httpclient.InferenceServerClient(served.url)
    try:
        for compression in (None, "gzip"):
            tensor = httpclient.InferInput("INPUT0", [1, 262144], "INT32")
            tensor.set_data_from_numpy(values)
            result = client.infer(
                "identity",
                [tensor],
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
                outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)],
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values)
    finally:
        client.close()


def test_e2e_rest_body_limit_is_413(served):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [1, 786432],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": 3145728},
                }
            ]
        }
    ).encode()
    status, _, answer = served.post(
        "/v2/models/identity/infer", header + bytes(3145728), {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 413
    assert f"maximum allowed input size of {MAX_INPUT} bytes" in json.loads(answer)["error"]


def test_e2e_rest_classification_matches_triton(served):
    async def run() -> tuple[list, list]:
        client = aioclient.InferenceServerClient(served.url)
        try:
            tensor = aioclient.InferInput("INPUT0", [1, 4], "INT32")
            tensor.set_data_from_numpy(np.array([[3, 9, 1, 4]], np.int32))
            ints = await client.infer(
                "identity", [tensor], outputs=[aioclient.InferRequestedOutput("OUTPUT0", class_count=2)]
            )
            a, b = aioclient.InferInput("INPUT0", [1, 4], "FP32"), aioclient.InferInput("INPUT1", [1, 4], "FP32")
            a.set_data_from_numpy(np.array([[1, 5, 3, 2]], np.float32))
            b.set_data_from_numpy(np.ones((1, 4), np.float32))
            floats = await client.infer(
                "add_sub", [a, b], outputs=[aioclient.InferRequestedOutput("OUTPUT0", class_count=3)]
            )
            return ints.as_numpy("OUTPUT0").tolist(), floats.as_numpy("OUTPUT0").tolist()
        finally:
            await client.close()

    ints, floats = asyncio.run(run())
    assert ints == [[b"9:1", b"4:3"]]
    assert floats == [[b"6.000000:1", b"4.000000:2", b"3.000000:3"]]


def test_e2e_rest_decoupled_model_streams_over_generate_stream(served):
    status, headers, body = served.post(
        "/v2/models/repeat/generate_stream", json.dumps({"id": "g", "IN": [4, 5, 6]}).encode()
    )
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = [json.loads(chunk.removeprefix(b"data: ")) for chunk in body.split(b"\n\n") if chunk]
    assert events == [
        {"IDX": index, "OUT": value, "id": "g", "model_name": "repeat", "model_version": "1"}
        for index, value in enumerate((4, 5, 6))
    ]
    status, _, body = served.post("/v2/models/repeat/generate", json.dumps({"IN": [7]}).encode())
    assert (status, json.loads(body)) == (200, {"IDX": 0, "OUT": 7, "model_name": "repeat", "model_version": "1"})
    status, _, body = served.post("/v2/models/repeat/infer", b"{}")
    assert status == 400 and "generate_stream" in json.loads(body)["error"]


def test_e2e_rest_metadata_config_stats_index(served):
    client = httpclient.InferenceServerClient(served.url)
    try:
        assert client.get_server_metadata()["name"] == "triton"
        assert client.get_model_metadata("identity")["inputs"] == [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, -1]}
        ]
        config = client.get_model_config("identity")
        assert (config["max_batch_size"], config["input"][0]["dims"]) == (8, [-1])
        names = {model["name"] for model in client.get_model_repository_index()}
        assert {"identity", "repeat", "delay", "add_sub", "every_dtype"} <= names
        stats = client.get_inference_statistics("identity")["model_stats"]
        assert stats[0]["name"] == "identity" and isinstance(stats[0]["inference_count"], int)
        status, _, body = served.post("/v2/models/nope/infer", b"{}")
        assert status == 404 and "nope" in json.loads(body)["error"]
    finally:
        client.close()


def _worker_gauge(served: Served, model: str) -> float:
    _, text = http_get(served.system_port, "/metrics")
    for line in text.splitlines():
        if line.startswith("dyntriton_worker_inflight_requests") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_e2e_rest_client_disconnect_cancels_the_worker_request(served):
    body = json.dumps(
        {
            "inputs": [
                {"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]},
                {"name": "DELAY_MS", "shape": [1], "datatype": "UINT32", "data": [120000]},
            ]
        }
    ).encode()
    request = (
        f"POST /v2/models/delay/infer HTTP/1.1\r\nHost: {served.url}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", served.http_port)) as sock:
        sock.sendall(request)
        wait_until(lambda: _worker_gauge(served, "delay") == 1, 60, "the worker to run the request", served.cluster)
    # The 120 s delay model stops early only when Triton cancels its request.
    wait_until(lambda: _worker_gauge(served, "delay") == 0, 60, "the worker's request to be cancelled", served.cluster)
    _, text = http_get(served.http_port, "/metrics")
    assert 'dyntriton_frontend_request_failures_total{code="CANCELLED",model="delay",protocol="http"} 1.0' in text
