"""The model repository extension of both frontends over a recording ModelRepository: Triton's
parameter rules (types, names, base64), the answers' codes, and what reaches the repository."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from dynamo_triton.errors import DyntritonError, InvalidRequestError
from dynamo_triton.frontend import RepositoryModel

from .conftest import EchoService


class RecordingRepository:
    """Answers from a fixed index; remembers every load and unload; ``fail`` is raised by the next one."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: DyntritonError | None = None
        self.entries = [
            RepositoryModel("broken", "", "UNAVAILABLE", "does not parse"),
            RepositoryModel("identity", "1", "READY"),
            RepositoryModel("spare"),
        ]

    async def index(self, *, ready: bool = False) -> list[RepositoryModel]:
        self.calls.append(("index", ready))
        return [entry for entry in self.entries if entry.state == "READY" or not ready]

    async def load(
        self,
        name: str,
        *,
        config: str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.calls.append(("load", name, config, dict(files or {}), timeout))
        if self.fail is not None:
            raise self.fail

    async def unload(self, name: str, *, timeout: float | None = None) -> None:
        self.calls.append(("unload", name, timeout))


@pytest.fixture
def repository() -> RecordingRepository:
    return RecordingRepository()


@pytest.fixture
def service(repository: RecordingRepository) -> EchoService:
    service = EchoService()
    service.repository = repository  # type: ignore[assignment]
    return service


def _stub(frontend: Any) -> tuple[grpc.aio.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}")
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


async def test_grpc_load_passes_config_files_and_the_deadline(
    grpc_frontend: Any, repository: RecordingRepository
) -> None:
    channel, stub = _stub(grpc_frontend)
    async with channel:
        request = service_pb2.RepositoryModelLoadRequest(model_name="identity")
        request.parameters["config"].string_param = '{"max_batch_size": 16}'
        request.parameters["file:1/model.py"].bytes_param = b"\x00code"
        await stub.RepositoryModelLoad(request, timeout=30)
        await stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="identity"), timeout=30)
    (_, name, config, files, timeout), unload = repository.calls
    assert (name, config, files) == ("identity", '{"max_batch_size": 16}', {"1/model.py": b"\x00code"})
    # gRPC sends the deadline as a grpc-timeout header rounded up (e.g. 29.99 s -> 30100m): a little over 30 s.
    assert timeout is not None and 25 < timeout <= 30.2
    assert unload[:2] == ("unload", "identity")


@pytest.mark.parametrize(
    ("key", "kind", "value", "code", "says"),
    [
        ("config", "bytes_param", b"{}", "INVALID_ARGUMENT", "expected string_param"),
        ("file:1/m", "string_param", "x", "INVALID_ARGUMENT", "expected bytes_param"),
        ("colour", "string_param", "x", "INVALID_ARGUMENT", "unrecognized load parameter 'colour'"),
    ],
)
async def test_grpc_load_parameters_follow_tritons_rules(
    grpc_frontend: Any, repository: RecordingRepository, key: str, kind: str, value: Any, code: str, says: str
) -> None:
    channel, stub = _stub(grpc_frontend)
    request = service_pb2.RepositoryModelLoadRequest(model_name="identity")
    setattr(request.parameters[key], kind, value)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RepositoryModelLoad(request)
    assert refused.value.code().name == code and says in (refused.value.details() or "")
    assert repository.calls == []


async def test_grpc_refusals_repository_name_unload_dependents_and_the_repositorys_errors(
    grpc_frontend: Any, repository: RecordingRepository
) -> None:
    channel, stub = _stub(grpc_frontend)
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as named:
            await stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(repository_name="r", model_name="m"))
        assert named.value.code() == grpc.StatusCode.UNIMPLEMENTED
        unload = service_pb2.RepositoryModelUnloadRequest(model_name="identity")
        unload.parameters["unload_dependents"].bool_param = True
        with pytest.raises(grpc.aio.AioRpcError) as dependents:
            await stub.RepositoryModelUnload(unload)
        assert dependents.value.code() == grpc.StatusCode.UNIMPLEMENTED
        repository.fail = InvalidRequestError("failed to load 'nope': no model repository of the workers has it")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="nope"))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert unknown.value.details() == repository.fail.message


async def test_grpc_index_has_every_state_and_reason_and_metadata_lists_model_repository(
    grpc_frontend: Any, repository: RecordingRepository
) -> None:
    channel, stub = _stub(grpc_frontend)
    async with channel:
        answer = await stub.RepositoryIndex(service_pb2.RepositoryIndexRequest())
        ready = await stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
        metadata = await stub.ServerMetadata(service_pb2.ServerMetadataRequest())
    assert [(m.name, m.version, m.state, m.reason) for m in answer.models] == [
        ("broken", "", "UNAVAILABLE", "does not parse"),
        ("identity", "1", "READY", ""),
        ("spare", "", "", ""),
    ]
    assert [m.name for m in ready.models] == ["identity"]
    assert "model_repository" in metadata.extensions


async def _post(frontend: Any, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{frontend.port}{path}", data=data) as r,
    ):
        text = await r.text()
        return r.status, json.loads(text) if text else None


async def test_rest_load_decodes_base64_files_and_unload_answers_200(
    http_frontend: Any, repository: RecordingRepository
) -> None:
    parameters = {"config": "{}", "file:1/model.py": base64.b64encode(b"\x00code").decode()}
    assert await _post(http_frontend, "/v2/repository/models/identity/load", {"parameters": parameters}) == (200, None)
    assert await _post(http_frontend, "/v2/repository/models/identity/unload") == (200, None)
    assert repository.calls == [
        ("load", "identity", "{}", {"1/model.py": b"\x00code"}, None),
        ("unload", "identity", None),
    ]


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v2/repository/models/m/load", {"parameters": {"file:1/x": "not base64!"}}, 400, "Failed to decode base64"),
        ("/v2/repository/models/m/load", {"parameters": {"config": {"a": 1}}}, 400, "expected a string"),
        ("/v2/repository/models/m/load", {"parameters": {"colour": "red"}}, 400, "unrecognized load parameter"),
        ("/v2/repository/models/m/load", b"{nope", 400, "failed to parse"),
        ("/v2/repository/models/m/unload", {"parameters": {"unload_dependents": True}}, 501, "unload_dependents"),
        ("/v2/repository/models/m/unload", {"parameters": {"unload_dependents": 1}}, 400, "expected a boolean"),
        ("/v2/repository/mine/models/m/load", None, 501, "'repository_name' specification is not supported"),
        ("/v2/repository/mine/index", None, 501, "'repository_name' specification is not supported"),
    ],
)
async def test_rest_refusals(
    http_frontend: Any, repository: RecordingRepository, path: str, body: Any, status: int, says: str
) -> None:
    got, answer = await _post(http_frontend, path, body)
    assert got == status and says in answer["error"]
    assert [call for call in repository.calls if call[0] != "index"] == []


async def test_rest_index_leaves_empty_fields_out_as_triton(http_frontend: Any) -> None:
    assert await _post(http_frontend, "/v2/repository/index") == (
        200,
        [
            {"name": "broken", "state": "UNAVAILABLE", "reason": "does not parse"},
            {"name": "identity", "version": "1", "state": "READY"},
            {"name": "spare"},
        ],
    )
    assert await _post(http_frontend, "/v2/repository/index", {"ready": True}) == (
        200,
        [{"name": "identity", "version": "1", "state": "READY"}],
    )
