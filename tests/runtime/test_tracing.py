"""Tracing's pieces without a cluster: Triton's --trace-config, the context parameter, sampling.

The e2e test (tests/e2e/test_e2e_tracing.py) runs the whole path through ``serve``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import ConfigError, InvalidRequestError
from dynamo_triton.runtime.server_settings import TraceSettings, trace_update_from_json
from dynamo_triton.runtime.tracing import (
    TRACE_PARAMETER,
    RequestTracing,
    TraceConfig,
    WorkerTracing,
    append_context,
    split_context,
)


def _request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="identity", id="r1")
    request.parameters["priority"].int64_param = 3
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 4])
    request.raw_input_contents.append(bytes(range(16)))
    return request


def test_trace_config_reads_tritons_spelling() -> None:
    config = TraceConfig.parse(
        [
            "mode=opentelemetry",
            "opentelemetry,url=http://collector:4318/v1/traces",
            "opentelemetry,bsp_schedule_delay=100",
            "level=TIMESTAMPS",
            "rate=10",
            "count=5",
        ]
    )
    assert (config.mode, config.level, config.rate, config.count) == ("opentelemetry", ("TIMESTAMPS",), 10, 5)
    assert config.url == "http://collector:4318/v1/traces"
    assert TraceConfig.parse(config.as_args()) == config  # what serve hands its workers
    start = config.as_start()
    assert start["trace_mode"] == "opentelemetry" and start["bsp_schedule_delay"] == "100"
    assert TraceConfig.parse(["mode=opentelemetry"]).url == "http://localhost:4318/v1/traces"  # Triton's default
    assert TraceConfig.parse([]).url == ""  # triton mode: nothing exported


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("mode=jaeger", "the modes are triton and opentelemetry"),
        ("level=ALL", "the levels are"),
        ("rate=often", "expected an integer"),
        ("count=-2", "out of range"),
        ("triton,file=/tmp/trace.json", "writes no Triton trace file"),
        ("url", "expected <setting>=<value>"),
        ("zipkin,url=x", "unknown trace mode 'zipkin'"),
    ],
)
def test_a_bad_trace_config_says_what_is_wrong(item: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        TraceConfig.parse([item])


def test_the_context_appended_to_the_bytes_merges_into_the_parameters_map() -> None:
    request = _request()
    raw = request.SerializeToString()
    parent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    carried = service_pb2.ModelInferRequest.FromString(append_context(raw, parent, "vendor=1,other=2"))
    assert split_context(carried.parameters[TRACE_PARAMETER].string_param) == (parent, "vendor=1,other=2")
    assert carried.parameters["priority"].int64_param == 3  # the client's parameters stay
    assert carried.raw_input_contents[0] == bytes(range(16))
    carried = service_pb2.ModelInferRequest.FromString(append_context(raw, parent))
    assert split_context(carried.parameters[TRACE_PARAMETER].string_param) == (parent, "")


def test_the_worker_strips_the_context_even_when_it_does_not_trace() -> None:
    request = _request()
    parent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    carried = service_pb2.ModelInferRequest.FromString(append_context(request.SerializeToString(), parent))
    assert WorkerTracing().take(carried) is None  # no endpoint configured: nothing traced
    assert carried == request  # the model sees exactly what the client sent
    assert WorkerTracing().take(request) is None and request == _request()


def test_opentelemetry_mode_answers_tritons_keys_and_takes_a_level() -> None:
    start = TraceConfig.parse(["mode=opentelemetry", "opentelemetry,url=http://c:4318/v1/traces"]).as_start()
    settings = TraceSettings(start=start)
    assert settings.as_json() == {
        "trace_level": ["OFF"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "trace_mode": "opentelemetry",
        "url": "http://c:4318/v1/traces",
        "bsp_max_export_batch_size": "512",
        "bsp_schedule_delay": "5000",
        "bsp_max_queue_size": "2048",
    }
    traced = trace_update_from_json(settings, "", {"trace_level": ["TIMESTAMPS"], "trace_rate": "2"})
    assert traced.as_json()["trace_level"] == ["TIMESTAMPS"]
    assert TraceSettings.from_json(traced.to_json(), start).as_json() == traced.as_json()
    with pytest.raises(InvalidRequestError, match="sample rate must be non-zero"):
        trace_update_from_json(traced, "", {"trace_rate": "0"})
    with pytest.raises(InvalidRequestError, match="trace file name is not given"):  # triton mode: as before
        trace_update_from_json(TraceSettings(), "", {"trace_level": ["TIMESTAMPS"]})


def test_off_is_one_boolean_and_makes_nothing() -> None:
    tracing = RequestTracing()
    assert tracing.on is False
    tracing.configure(TraceConfig.parse(["mode=opentelemetry", "opentelemetry,url=http://127.0.0.1:9/v1/traces"]))
    assert tracing.on is False  # level OFF: the SDK is not even loaded into a provider
    assert tracing._tracer is None


def test_rate_and_count_sample_as_triton(otlp_url: str) -> None:
    config = TraceConfig.parse(
        ["mode=opentelemetry", f"opentelemetry,url={otlp_url}", "level=TIMESTAMPS", "rate=2", "count=2"]
    )
    tracing = RequestTracing()
    tracing.configure(config)
    try:
        taken = [tracing.begin("identity", "grpc", (), time.perf_counter()) for _ in range(7)]
        assert [trace is not None for trace in taken] == [True, False, True, False, False, False, False]
        for trace in taken:
            if trace is not None:
                trace.end("OK")
        # a model's own layer has its own sampler
        tracing.apply(trace_update_from_json(TraceSettings(start=config.as_start()), "other", {"trace_rate": "1"}))
        assert tracing.begin("other", "http", (), time.perf_counter()) is not None
    finally:
        tracing.shutdown()


@pytest.fixture
def otlp_url() -> Iterator[str]:
    from dynamo_triton.testing.otlp import run_otlp_receiver

    pytest.importorskip("opentelemetry.sdk.trace", reason="needs the trace extra")
    with run_otlp_receiver() as receiver:
        yield receiver.url
