"""One request's trace, frontend → request plane → worker → Triton, received by a real OTLP receiver.

``dyntriton serve --workers 1`` (file store, tcp request plane: the context crosses a process) is
started in ``trace_mode`` opentelemetry with the level ``OFF``; the test then steers it through the
trace extension as a Triton user would, and reads what an OTLP/HTTP receiver got. Each wait has a
deadline; "nothing else was exported" is checked after a marker request sent later came through
(each process exports its spans in order).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, Proc, model_ready, wait_until
from dynamo_triton.testing.otlp import OtlpReceiver, ReceivedSpan, run_otlp_receiver

pytest.importorskip("opentelemetry.sdk.trace", reason="needs the trace extra")
pytestmark = [pytest.mark.slow, pytest.mark.triton]

WAIT = 60.0
FRONTEND_SPANS = {"identity infer", "admission", "request plane"}
WORKER_SPANS = {"worker", "triton request", "triton queue", "triton compute"}


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[OtlpReceiver, str, str]]:
    tmp = tmp_path_factory.mktemp("tracing")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    with run_otlp_receiver() as receiver:
        flags = (
            "--workers",
            "1",
            "--trace-config",
            "mode=opentelemetry",
            "--trace-config",
            f"opentelemetry,url={receiver.url}",
            "--trace-config",
            "opentelemetry,bsp_schedule_delay=50",
            "--trace-config",
            "rate=1",
        )
        proc, url = cluster.serve("identity", extra=flags)
        try:
            wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "serve to be ready", cluster)
            yield receiver, url, _http_url(proc)
        finally:
            cluster.stop()


def _http_url(proc: Proc) -> str:
    return f"127.0.0.1:{proc.argv[proc.argv.index('--http-port') + 1]}"


def _grpc_infer(url: str, headers: dict[str, str]) -> None:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        result = client.infer("identity", [tensor], headers=headers)
        assert result.as_numpy("OUTPUT0").tolist() == [list(range(16))]
    finally:
        client.close()


def _http_infer(url: str, headers: dict[str, str]) -> None:
    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 16], "INT32")
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16), binary_data=True)
        result = client.infer("identity", [tensor], headers=headers)
        assert result.as_numpy("OUTPUT0").tolist() == [list(range(16))]
    finally:
        client.close()


def _set_trace(url: str, **settings: str) -> dict[str, object]:
    client = grpcclient.InferenceServerClient(url)
    try:
        return client.update_trace_settings(settings=settings, as_json=True)["settings"]  # type: ignore[no-any-return]
    finally:
        client.close()


def _names(spans: list[ReceivedSpan], trace_id: str) -> set[str]:
    return {span.name for span in spans if span.trace_id == trace_id}


def _complete(trace_id: str) -> Callable[[list[ReceivedSpan]], bool]:
    return lambda spans: _names(spans, trace_id) >= FRONTEND_SPANS | WORKER_SPANS


def _by_name(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans if span.trace_id == trace_id}


def _check_tree(spans: list[ReceivedSpan], trace_id: str, client_span: str, protocol: str) -> None:
    found = _by_name(spans, trace_id)
    root, call, worker = found["identity infer"], found["request plane"], found["worker"]
    assert root.parent_span_id == client_span  # the client's traceparent is the root's parent
    assert root.attributes["model"] == "identity"
    assert root.attributes["protocol"] == protocol
    assert root.attributes["status"] == "OK"
    assert found["admission"].parent_span_id == root.span_id
    assert call.parent_span_id == root.span_id
    assert worker.parent_span_id == call.span_id  # the context crossed the request plane
    assert worker.attributes["status"] == "OK"
    assert (root.service, worker.service) == ("dyntriton-frontend", "dyntriton-worker")
    request = found["triton request"]
    assert request.parent_span_id == worker.span_id
    assert found["triton queue"].parent_span_id == request.span_id
    assert found["triton compute"].parent_span_id == request.span_id
    assert request.attributes["model"] == "identity"
    # Triton's timestamps sit inside the worker's handling (steady clock mapped onto Unix time)
    margin = 50_000_000
    assert worker.start_ns - margin <= request.start_ns <= request.end_ns <= worker.end_ns + margin


def test_trace_settings_answer_in_opentelemetry_mode_as_triton(traced: tuple[OtlpReceiver, str, str]) -> None:
    receiver, url, _ = traced
    client = grpcclient.InferenceServerClient(url)
    try:
        settings = client.get_trace_settings(as_json=True)["settings"]
    finally:
        client.close()
    values = {key: value["value"] for key, value in settings.items()}
    assert values == {  # Triton 2.51's keys with --trace-config mode=opentelemetry (checked against tritonserver)
        "trace_level": ["OFF"],
        "trace_rate": ["1"],
        "trace_count": ["-1"],
        "trace_mode": ["opentelemetry"],
        "url": [receiver.url],
        "bsp_max_export_batch_size": ["512"],
        "bsp_schedule_delay": ["50"],
        "bsp_max_queue_size": ["2048"],
    }


def test_one_trace_spans_frontend_worker_and_triton(traced: tuple[OtlpReceiver, str, str]) -> None:
    receiver, url, http_url = traced
    off_header, off_trace, _ = _traceparent()
    _grpc_infer(url, {"traceparent": off_header})  # level OFF: not traced

    _set_trace(url, trace_level=["TIMESTAMPS"], trace_rate="1")
    grpc_header, grpc_trace, grpc_parent = _traceparent()
    _grpc_infer(url, {"traceparent": grpc_header, "tracestate": "vendor=1"})
    http_header, http_trace, http_parent = _traceparent()
    _http_infer(http_url, {"traceparent": http_header})

    spans = receiver.wait_for(_complete(grpc_trace), WAIT, "the gRPC request's spans")
    _check_tree(spans, grpc_trace, grpc_parent, "grpc")
    spans = receiver.wait_for(_complete(http_trace), WAIT, "the HTTP request's spans")
    _check_tree(spans, http_trace, http_parent, "http")
    assert not receiver.spans(off_trace)  # sent earlier than both: exported first if at all


def test_trace_rate_traces_one_request_in_n(traced: tuple[OtlpReceiver, str, str]) -> None:
    receiver, url, _ = traced
    _set_trace(url, trace_level=["TIMESTAMPS"], trace_rate="2")
    sent = []
    for _ in range(4):
        header, trace_id, _parent = _traceparent()
        _grpc_infer(url, {"traceparent": header})
        sent.append(trace_id)
    _set_trace(url, trace_rate="1")
    marker, marker_trace, _ = _traceparent()
    _grpc_infer(url, {"traceparent": marker})
    receiver.wait_for(_complete(marker_trace), WAIT, "the marker request's spans")
    first, third = _complete(sent[0]), _complete(sent[2])
    receiver.wait_for(lambda spans: first(spans) and third(spans), WAIT, "the sampled requests' spans")
    traced_ids = [trace_id for trace_id in sent if receiver.spans(trace_id)]
    assert traced_ids == [sent[0], sent[2]]


def test_trace_level_off_exports_nothing(traced: tuple[OtlpReceiver, str, str]) -> None:
    receiver, url, http_url = traced
    _set_trace(url, trace_level=["OFF"])
    quiet = []
    for infer in (_grpc_infer, _http_infer):
        header, trace_id, _ = _traceparent()
        infer(url if infer is _grpc_infer else http_url, {"traceparent": header})
        quiet.append(trace_id)
    _set_trace(url, trace_level=["TIMESTAMPS"], trace_rate="1")
    marker, marker_trace, _ = _traceparent()
    _grpc_infer(url, {"traceparent": marker})
    receiver.wait_for(_complete(marker_trace), WAIT, "the marker request's spans")
    assert [trace_id for trace_id in quiet if receiver.spans(trace_id)] == []


def test_concurrent_traced_and_untraced_requests_all_answer(traced: tuple[OtlpReceiver, str, str]) -> None:
    """Triton's trace callbacks (Python, on Triton's threads) next to untraced requests: no deadlock."""
    receiver, url, _ = traced
    _set_trace(url, trace_level=["TIMESTAMPS"], trace_rate="2")
    headers = [_traceparent() for _ in range(48)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda header: _grpc_infer(url, {"traceparent": header[0]}), headers))
    _set_trace(url, trace_rate="1")
    marker, marker_trace, _ = _traceparent()
    _grpc_infer(url, {"traceparent": marker})
    receiver.wait_for(_complete(marker_trace), WAIT, "the marker request's spans")
    traced_ids = [trace_id for _, trace_id, _ in headers if receiver.spans(trace_id)]
    assert len(traced_ids) == 24  # one in two, whichever the frontend took first
    receiver.wait_for(
        lambda spans: all(_complete(trace_id)(spans) for trace_id in traced_ids), WAIT, "every sampled trace"
    )
