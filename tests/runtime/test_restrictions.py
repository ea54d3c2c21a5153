"""Triton's restricted groups: every KServe call has its group, and the specs parse as Triton parses them."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.runtime.restrictions import GROUPS, GRPC_GROUPS, http_group, parse_restrictions


def test_every_grpc_method_of_the_service_has_a_triton_group() -> None:
    methods = {m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert set(GRPC_GROUPS) == methods
    assert set(GRPC_GROUPS.values()) == set(GROUPS)


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("/v2", "metadata"),
        ("/v2/health/live", "health"),
        ("/v2/health/ready", "health"),
        ("/v2/models/identity", "metadata"),
        ("/v2/models/identity/versions/1", "metadata"),
        ("/v2/models/identity/ready", "health"),
        ("/v2/models/identity/versions/1/ready", "health"),
        ("/v2/models/identity/config", "model-config"),
        ("/v2/models/identity/infer", "inference"),
        ("/v2/models/identity/versions/1/generate_stream", "inference"),
        ("/v2/models/stats", "statistics"),
        ("/v2/models/identity/stats", "statistics"),
        ("/v2/repository/index", "model-repository"),
        ("/v2/repository/models/identity/load", "model-repository"),
        ("/v2/repository/other/index", "model-repository"),
        ("/v2/trace/setting", "trace"),
        ("/v2/models/identity/trace/setting", "trace"),
        ("/v2/logging", "logging"),
        ("/v2/systemsharedmemory/status", "shared-memory"),
        ("/v2/cudasharedmemory/region/r/register", "shared-memory"),
        ("/metrics", None),
        ("/health", None),
        ("/live", None),
    ],
)
def test_rest_paths_belong_to_tritons_groups(path: str, group: str | None) -> None:
    assert http_group(path) == group


def test_the_header_and_message_are_tritons() -> None:
    grpc = parse_restrictions(["model-repository,logging:admin-key=secret"], grpc=True)
    assert grpc.groups() == ["model-repository", "logging"]
    assert grpc.refusal("model-repository", {}.get) == (
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
    )
    assert grpc.refusal("model-repository", {"triton-grpc-protocol-admin-key": "secret"}.get) is None
    assert grpc.refusal("model-repository", {"admin-key": "secret"}.get) is not None  # no prefix: refused
    assert grpc.refusal("inference", {}.get) is None
    http = parse_restrictions(["inference:k=v", "trace:other=x"], grpc=False)
    assert http.refusal("inference", {"k": "w"}.get) == "This API is restricted, expecting header 'k'"
    assert http.refusal("trace", {"other": "x"}.get) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("model-repository", "format is"),
        ("model-repository:key", "format is"),
        (":key=value", "format is"),
        ("repository:key=value", "unknown restricted protocol 'repository'"),
    ],
)
def test_malformed_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_restrictions([spec], grpc=True)


def test_a_group_in_two_specs_is_refused_as_triton() -> None:
    with pytest.raises(ValueError, match="restricted api 'trace' can not be specified in multiple config groups"):
        parse_restrictions(["trace:a=1", "logging,trace:b=2"], grpc=False)
