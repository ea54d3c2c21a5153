"""Triton's restricted protocols, logging and trace extensions: `dyntriton serve` side by side with `tritonserver`.

One ``serve`` and one ``tritonserver`` run for the module with the same restriction flags;
every call goes to both and the answers (status, message, settings) must be equal. Where the
two cannot agree by design it is said next to the check (the embedded Triton starts with
info logging off; dyntriton applies nothing of a refused update).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import service_pb2

from dynamo_triton.testing.cluster import MODEL_REPO, START_TIMEOUT, Cluster, Proc, model_ready, wait_until
from dynamo_triton.testing.tritonserver import TritonDirect, run_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.triton]

FLAGS = (
    "--grpc-restricted-protocol=model-repository:admin-key=secret",
    "--http-restricted-api=model-repository,statistics:admin-key=secret",
)
GRPC_HEADER = {"triton-grpc-protocol-admin-key": "secret"}
HTTP_HEADER = {"admin-key": "secret"}


class Server:
    """One server's endpoints: gRPC ``host:port`` and HTTP ``host:port``."""

    def __init__(self, name: str, grpc_url: str, http_url: str):
        self.name, self.grpc_url, self.http_url = name, grpc_url, http_url

    def rpc(self, method: str, request: Any, response_type: Any, metadata: dict[str, str] | None = None) -> Any:
        """Call ``method``: ``("OK", answer as a dict)`` or ``(status name, details)``."""
        with grpc.insecure_channel(self.grpc_url) as channel:
            call = channel.unary_unary(
                f"/inference.GRPCInferenceService/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )
            try:
                answer = call(request, metadata=tuple((metadata or {}).items()), timeout=30)
            except grpc.RpcError as exc:
                return exc.code().name, exc.details()
        return "OK", MessageToDict(answer, preserving_proto_field_name=True)

    def http(
        self, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        return status, json.loads(text) if text else None


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[Server, Server, Proc]]:
    tmp = tmp_path_factory.mktemp("extensions")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    proc, url = cluster.serve("identity", extra=FLAGS)
    http_port = proc.argv[proc.argv.index("--http-port") + 1]
    try:
        with run_tritonserver(MODEL_REPO, ("identity",), tmp=tmp, extra_args=FLAGS) as triton:
            wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity through serve", cluster)
            yield Server("dyntriton", url, f"127.0.0.1:{http_port}"), _triton(triton), proc
    finally:
        cluster.stop()


def _triton(triton: TritonDirect) -> Server:
    return Server("triton", triton.grpc_url, triton.http_url)


def both(servers: tuple[Server, Server, Proc], call: Any) -> Any:
    """``call(server)`` on both servers; asserts the answers are equal and returns it."""
    ours, theirs = call(servers[0]), call(servers[1])
    assert ours == theirs, f"dyntriton: {ours}\ntriton:    {theirs}"
    return ours


# -- restricted protocols ---------------------------------------------------------------------------
def test_the_repository_index_needs_the_header_as_on_triton(servers: tuple[Server, Server, Proc]) -> None:
    index = service_pb2.RepositoryIndexRequest(ready=True)
    response = service_pb2.RepositoryIndexResponse

    refused = both(servers, lambda s: s.rpc("RepositoryIndex", index, response))
    assert refused == ("UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'")
    assert both(servers, lambda s: s.rpc("RepositoryIndex", index, response, {"admin-key": "secret"}))[0] != "OK"
    assert both(servers, lambda s: s.rpc("RepositoryIndex", index, response, {**GRPC_HEADER, "x": "1"}))[0] == "OK"
    wrong = {"triton-grpc-protocol-admin-key": "guess"}
    assert both(servers, lambda s: s.rpc("RepositoryIndex", index, response, wrong))[0] == "UNAVAILABLE"
    # groups not named stay open
    ready = service_pb2.ServerReadyRequest()
    assert both(servers, lambda s: s.rpc("ServerReady", ready, service_pb2.ServerReadyResponse))[0] == "OK"
    stats = service_pb2.ModelStatisticsRequest(name="identity")
    assert both(servers, lambda s: s.rpc("ModelStatistics", stats, service_pb2.ModelStatisticsResponse)[0]) == "OK"

    status, body = both(servers, lambda s: s.http("/v2/repository/index", raw=b""))
    assert (status, body) == (403, {"error": "This API is restricted, expecting header 'admin-key'"})
    assert both(servers, lambda s: s.http("/v2/models/identity/stats")[0]) == 403
    assert both(servers, lambda s: s.http("/v2/repository/index", raw=b"", headers=HTTP_HEADER)[0]) == 200
    assert both(servers, lambda s: s.http("/v2/models/identity/stats", headers=HTTP_HEADER)[0]) == 200
    assert both(servers, lambda s: s.http("/v2/health/ready")[0]) == 200


def test_tritonclient_with_the_header_loads_nothing_without_it(servers: tuple[Server, Server, Proc]) -> None:
    for server in servers[:2]:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            with pytest.raises(Exception, match="This protocol is restricted"):
                client.get_model_repository_index()
            names = {model.name for model in client.get_model_repository_index(headers=GRPC_HEADER).models}
            assert "identity" in names, server.name
        finally:
            client.close()


# -- logging ----------------------------------------------------------------------------------------
def _log(server: Server, settings: dict[str, service_pb2.LogSettingsRequest.SettingValue] | None = None) -> Any:
    request = service_pb2.LogSettingsRequest()
    for name, value in (settings or {}).items():
        request.settings[name].CopyFrom(value)
    return server.rpc("LogSettings", request, service_pb2.LogSettingsResponse)


def _value(**kind: Any) -> service_pb2.LogSettingsRequest.SettingValue:
    return service_pb2.LogSettingsRequest.SettingValue(**kind)


def test_log_settings_read_and_update_as_triton(servers: tuple[Server, Server, Proc]) -> None:
    ours, theirs, _ = servers
    # Triton starts with info logging on; the embedded one with it off (its answer says so).
    assert set(_log(ours)[1]["settings"]) == set(_log(theirs)[1]["settings"])
    assert ours.http("/v2/logging")[1]["log_info"] is False
    full = {
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 1,
        "log_format": "ISO8601",
    }
    answer = both(servers, lambda s: s.http("/v2/logging", full))
    assert answer == (200, {"log_file": "", **full})
    assert both(servers, lambda s: s.http("/v2/logging")) == answer
    both(servers, lambda s: _log(s))
    both(
        servers, lambda s: _log(s, {"log_verbose_level": _value(uint32_param=0), "log_info": _value(bool_param=False)})
    )
    both(servers, lambda s: s.http("/v2/logging", {"log_warning": False, "log_format": "default", "log_info": None}))
    for bad in (
        {"log_file": _value(string_param="/tmp/x.log")},
        {"log_info": _value(string_param="yes")},
        {"log_verbose_level": _value(bool_param=True)},
        {"log_format": _value(string_param="json")},
        {"log_format": _value(uint32_param=1)},
    ):
        status, _ = both(servers, lambda s, bad=bad: _log(s, bad))
        assert status != "OK", bad
    for body in (
        {"log_file": "/tmp/x.log"},
        {"log_format": "json"},
        {"log_info": "yes"},
        {"log_verbose_level": -1},
        {"log_verbose_level": 1.5},
        {"log_format": 1},
    ):
        status, _ = both(servers, lambda s, body=body: s.http("/v2/logging", body))
        assert status >= 400, body
    both(servers, lambda s: s.http("/v2/logging", [1]))  # no field: nothing changes
    assert both(servers, lambda s: s.http("/v2/logging", raw=b"")[0]) == 500
    both(servers, lambda s: s.http("/v2/logging", {**full, "log_verbose_level": 0, "log_format": "default"}))


def test_a_verbose_level_reaches_the_workers_triton(servers: tuple[Server, Server, Proc]) -> None:
    ours, _, proc = servers
    client = grpcclient.InferenceServerClient(ours.grpc_url)
    item = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    item.set_data_from_numpy(np.arange(4, dtype=np.int32).reshape(1, 4))
    try:
        assert ours.http("/v2/logging", {"log_verbose_level": 1})[0] == 200

        def verbose_line() -> bool:
            client.infer("identity", [item])
            return "prepared: " in proc.output()  # Triton's verbose-1 line for every request

        wait_until(verbose_line, 30, "a verbose Triton log line from the worker")
    finally:
        ours.http("/v2/logging", {"log_verbose_level": 0})
        client.close()


# -- trace ------------------------------------------------------------------------------------------
def _trace(server: Server, model: str = "", settings: dict[str, list[str]] | None = None) -> Any:
    request = service_pb2.TraceSettingRequest(model_name=model)
    for name, values in (settings or {}).items():
        request.settings[name].value.extend(values)
    return server.rpc("TraceSetting", request, service_pb2.TraceSettingResponse)


def test_trace_settings_read_and_update_as_triton(servers: tuple[Server, Server, Proc]) -> None:
    both(servers, lambda s: _trace(s))
    both(servers, lambda s: _trace(s, "identity"))
    both(servers, lambda s: s.http("/v2/trace/setting"))
    both(servers, lambda s: _trace(s, "", {"trace_rate": ["50"], "trace_count": ["10"]}))
    both(servers, lambda s: _trace(s, "identity", {"trace_level": ["OFF"], "log_frequency": ["3"]}))
    both(servers, lambda s: s.http("/v2/models/identity/trace/setting"))
    # no trace file (it cannot be set over the network): a level that would trace is refused, as Triton
    refused = both(servers, lambda s: _trace(s, "identity", {"trace_level": ["TIMESTAMPS"]}))
    assert refused == ("INVALID_ARGUMENT", "Attempting to set invalid trace setting :trace file name is not given")
    both(servers, lambda s: s.http("/v2/models/identity/trace/setting", {"trace_level": ["TENSORS", "TIMESTAMPS"]}))
    both(servers, lambda s: s.http("/v2/trace/setting", {"trace_level": ["TENSORS"], "trace_rate": "0"}))
    both(servers, lambda s: s.http("/v2/trace/setting", {"trace_rate": "7"}))
    both(servers, lambda s: _trace(s, "identity"))  # the model's rate follows the global one
    both(servers, lambda s: _trace(s, "identity", {"trace_level": []}))  # cleared: back to the global level
    both(servers, lambda s: s.http("/v2/models/identity/trace/setting", {"trace_rate": None, "trace_level": ["X"]}))
    for bad in (
        {"trace_file": ["/tmp/t.json"]},
        {"trace_level": ["OFF", "TIMESTAMPS"]},
        {"trace_rate": ["abc"]},
        {"trace_rate": ["1", "2"]},
        {"trace_count": ["-5"]},
        {"trace_count": ["99999999999"]},
    ):
        assert both(servers, lambda s, bad=bad: _trace(s, "", bad))[0] != "OK", bad
    assert both(servers, lambda s: _trace(s, "nonexistent"))[0] == "INVALID_ARGUMENT"
    for body in (
        {"trace_file": "x"},
        {"trace_count": "-5"},
        {"trace_rate": "abc"},
        {"trace_level": ["OFF", "TENSORS"]},
    ):
        status, _ = both(servers, lambda s, body=body: s.http("/v2/trace/setting", body))
        assert status == 400 or status == 501, body
    assert both(servers, lambda s: s.http("/v2/models/nonexistent/trace/setting"))[0] == 400
    assert both(servers, lambda s: s.http("/v2/models/identity/versions/1/trace/setting"))[0] == 404
    for body in ({"trace_rate": 5}, {"trace_level": "TIMESTAMPS"}, {"trace_level": [1]}, {"trace_file": None}):
        assert both(servers, lambda s, body=body: s.http("/v2/trace/setting", body))[0] >= 500, body
    both(servers, lambda s: s.http("/v2/trace/setting", {"trace_rate": "-3"}))
    both(servers, lambda s: s.http("/v2/trace/setting", {"trace_rate": "12abc"}))
    both(servers, lambda s: s.http("/v2/trace/setting", {"trace_rate": None, "trace_count": None}))
    both(servers, lambda s: s.http("/v2/models/identity/trace/setting", {"log_frequency": None}))


def test_tritonclient_reads_and_updates_both_extensions(servers: tuple[Server, Server, Proc]) -> None:
    ours = grpcclient.InferenceServerClient(servers[0].grpc_url)
    try:
        assert ours.update_log_settings({"log_warning": True}, as_json=True)["settings"]["log_warning"]["bool_param"]
        assert ours.get_log_settings(as_json=True)["settings"]["log_format"]["string_param"] == "default"
        updated = ours.update_trace_settings("identity", {"trace_rate": "9"}, as_json=True)
        assert updated["settings"]["trace_rate"]["value"] == ["9"]
        assert ours.get_trace_settings("identity", as_json=True)["settings"]["trace_rate"]["value"] == ["9"]
        ours.update_trace_settings("identity", {"trace_rate": None})
    finally:
        ours.close()


# -- the frontend's /metrics ------------------------------------------------------------------------
def test_the_frontends_metrics_carry_tritons_families_summed_over_workers(servers: tuple[Server, Server, Proc]) -> None:
    ours = servers[0]
    client = grpcclient.InferenceServerClient(ours.grpc_url)
    item = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
    item.set_data_from_numpy(np.arange(4, dtype=np.int32).reshape(1, 4))
    try:
        for _ in range(3):
            client.infer("identity", [item])
    finally:
        client.close()

    def metric(name: str) -> float:
        with urllib.request.urlopen(f"http://{ours.http_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(name + '{model="identity",version="1"} '):
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    wait_until(lambda: metric("nv_inference_request_success") >= 3, 30, "nv_inference_request_success on /metrics")
    assert metric("nv_inference_exec_count") >= 3
    assert metric("nv_inference_count") >= 3
    assert metric("nv_inference_request_failure") == 0
    assert metric("nv_inference_compute_infer_duration_us") > 0
    assert metric("nv_inference_request_duration_us") >= metric("nv_inference_compute_infer_duration_us")
