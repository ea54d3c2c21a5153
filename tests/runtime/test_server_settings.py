"""Triton's log and trace settings rules without a server (the e2e test checks them against tritonserver)."""

from __future__ import annotations

import re

import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import DyntritonError
from dynamo_triton.kv import KVStore
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.cluster_settings import ClusterSettings, SettingsFollower
from dynamo_triton.runtime.server_settings import (
    LogSettings,
    TraceSettings,
    log_update_from_grpc,
    log_update_from_json,
    trace_update_from_grpc,
    trace_update_from_json,
)


def test_a_model_falls_back_to_the_global_layer_then_to_tritons_defaults() -> None:
    settings = trace_update_from_json(TraceSettings(), "", {"trace_rate": "50"})
    settings = trace_update_from_json(settings, "identity", {"trace_count": "3"})
    assert settings.as_json("identity")["trace_rate"] == "50"  # from the global layer
    assert settings.as_json("identity")["trace_count"] == "3"
    assert settings.as_json()["trace_count"] == "-1"  # Triton's default
    settings = trace_update_from_json(settings, "", {"trace_rate": "7"})
    assert settings.as_json("identity")["trace_rate"] == "7"  # follows the global change
    settings = trace_update_from_json(settings, "identity", {"trace_count": None})
    assert settings.as_json("identity")["trace_count"] == "-1"  # cleared: back to the global value
    assert TraceSettings.from_json(settings.to_json()) == settings


def test_trace_values_parse_as_tritons_stoi() -> None:
    parsed = trace_update_from_grpc(TraceSettings(), "", {"trace_rate": _values("12abc")})
    assert parsed.as_grpc()["trace_rate"] == ["12"]
    assert trace_update_from_json(TraceSettings(), "", {"trace_rate": "-3"}).as_json()["trace_rate"] == "4294967293"
    with pytest.raises(
        DyntritonError, match=re.escape("Unable to parse 'trace_count'. Expecting value >= -1, got: -5")
    ):
        trace_update_from_grpc(TraceSettings(), "", {"trace_count": _values("-5")})
    with pytest.raises(DyntritonError, match=re.escape("Unable to parse 'trace_count'. Expecting value >= -1, got:-5")):
        trace_update_from_json(TraceSettings(), "", {"trace_count": "-5"})


def test_a_level_that_would_trace_is_refused_without_a_trace_file() -> None:
    with pytest.raises(DyntritonError, match="trace file name is not given") as caught:
        trace_update_from_json(TraceSettings(), "m", {"trace_level": ["TIMESTAMPS"]})
    assert caught.value.status == "INVALID_ARGUMENT"
    with pytest.raises(DyntritonError, match="sample rate must be non-zero"):
        trace_update_from_json(TraceSettings(), "", {"trace_level": ["TENSORS"], "trace_rate": "0"})


def _values(*values: str) -> service_pb2.TraceSettingRequest.SettingValue:
    return service_pb2.TraceSettingRequest.SettingValue(value=list(values))


def test_log_updates_keep_what_they_do_not_name() -> None:
    current = LogSettings(log_info=False, log_verbose_level=2)
    updated = log_update_from_json(current, {"log_warning": False, "log_info": None})
    assert updated == LogSettings(log_info=False, log_warning=False, log_verbose_level=2)
    request = service_pb2.LogSettingsRequest()
    request.settings["log_format"].string_param = "ISO8601"
    assert log_update_from_grpc(updated, request.settings).log_format == "ISO8601"
    request.settings["log_info"].uint32_param = 1
    with pytest.raises(DyntritonError, match="expect boolean for 'log_info'"):
        log_update_from_grpc(updated, request.settings)


async def test_an_update_reaches_every_follower_and_a_late_one() -> None:
    store: KVStore = make_plugin_manager(entry_points=True).kv_store("mem")
    seen: list[LogSettings] = []
    first = SettingsFollower(store, "ns", seen.append)
    await first.start()
    try:
        settings = ClusterSettings(store, "ns", initial_log=LogSettings(log_info=False))
        assert await settings.log_settings() == LogSettings(log_info=False)
        answer = await settings.update_log(json={"log_verbose_level": 1})
        assert answer.log_verbose_level == 1 and answer.log_info is False
        late: list[LogSettings] = []
        second = SettingsFollower(store, "ns", late.append)
        await second.start()
        try:
            await _until(lambda: seen == [answer] and late == [answer])
        finally:
            await second.stop()
    finally:
        await first.stop()
        await store.close()


async def _until(check: object) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "the followers did not apply the update"
        await asyncio.sleep(0.01)
