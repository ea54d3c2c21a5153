"""A backend that breaks beyond repair reports it; the worker withdraws its cards, drains, and ends the process (6).

Real Worker on the ``mem`` store and the ``inproc`` transport; the backend is a small one implementing
:class:`dynamo_triton.backend.FatalReporting`; the process exit is injected (recorded, not done). The
Triton case (a python stub SIGKILLed under load, its worker restarted by serve with exit code 6) is
tests/fault/test_fault_supervision.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

import dynamo_triton.runtime.worker as worker_module
from dynamo_triton.backend import FatalReporting, ModelInfo
from dynamo_triton.cli.exits import EXIT_BACKEND_BROKEN
from dynamo_triton.errors import ModelNotFoundError, PeerGoneError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.cards import models_prefix
from dynamo_triton.runtime.service import INFER_ENDPOINT
from dynamo_triton.runtime.worker import Worker, WorkerSettings
from dynamo_triton.testing.wait import until

WAIT = 10.0


class BreakingBackend:
    """Serves model ``m``; a request waits for ``gate``; :meth:`break_now` reports a fatal failure."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0
        self.stopped = False
        self._callbacks: list[Callable[[str], None]] = []

    def on_fatal(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def break_now(self) -> None:
        for callback in self._callbacks:
            asyncio.get_running_loop().call_soon(callback, "the engine's helper process died")

    async def start(self) -> None:
        pass

    async def stop(self, *, timeout: float = 30.0) -> None:
        self.stopped = True

    async def repository_index(self) -> list[str]:
        return ["m"]

    async def load_model(
        self, name: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> ModelInfo:
        if name != "m":
            raise ModelNotFoundError(f"model '{name}' is not in the model repository")
        return self.model(name)

    async def unload_model(self, name: str) -> None:
        pass

    def model(self, name: str) -> ModelInfo:
        config = model_config_pb2.ModelConfig(name=name)
        return ModelInfo(name, "1", config, service_pb2.ModelMetadataResponse(name=name, versions=["1"]))

    def server_identity(self) -> tuple[str, str]:
        return ("fake", "1")

    async def ready(self) -> bool:
        return True

    async def infer(self, request: service_pb2.ModelInferRequest) -> AsyncIterator[service_pb2.ModelInferResponse]:
        yield service_pb2.ModelInferResponse(model_name=request.model_name)

    async def infer_serialized(self, request: service_pb2.ModelInferRequest, raw_inputs: Any = None) -> Any:
        self.running += 1
        await self.gate.wait()
        yield service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id).SerializeToString()

    async def statistics(self, name: str = "") -> Any:
        return service_pb2.ModelStatisticsResponse()


class Harness:
    def __init__(self) -> None:
        self.plugins = make_plugin_manager(env={})
        self.store = self.plugins.kv_store("mem", space=f"broken-{uuid.uuid4().hex}")
        self.transport = self.plugins.transport("inproc")
        self.client = self.transport.client()
        self.backend = BreakingBackend()
        self.exits: list[int] = []
        self.exited = asyncio.Event()
        self.worker = Worker(self.backend, self.store, self.transport, WorkerSettings(), exit_process=self._exit)

    def _exit(self, code: int) -> None:
        self.exits.append(code)
        self.exited.set()

    async def cards(self) -> int:
        return len(await self.store.list(models_prefix("dynamo")))

    async def call(self, request_id: str) -> bytes:
        payload = service_pb2.ModelInferRequest(model_name="m", id=request_id).SerializeToString()
        return b"".join(
            [bytes(chunk) async for chunk in self.client.call(self.worker.address, INFER_ENDPOINT, payload)]
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    await harness.worker.start()
    try:
        yield harness
    finally:
        harness.backend.gate.set()
        if not harness.exits:
            await harness.worker.stop()
        await harness.client.close()
        await harness.store.close()


def test_the_triton_backend_reports_instead_of_ending_the_process() -> None:
    pytest.importorskip("dyntriton_backend_triton")
    from dynamo_triton.backend import BackendSettings

    backend = make_plugin_manager().backend("triton", BackendSettings(model_repository="model_repo"))
    assert isinstance(backend, FatalReporting)


async def test_a_broken_backend_makes_the_worker_withdraw_drain_and_exit_with_6(harness: Harness) -> None:
    assert await harness.cards() == 1
    in_flight = asyncio.ensure_future(harness.call("before"))
    await until(lambda: harness.backend.running == 1, WAIT, "the request to reach the backend")

    harness.backend.break_now()

    async def withdrawn() -> bool:
        return await harness.cards() == 0

    await until(withdrawn, WAIT, "the worker's card to be withdrawn")
    assert harness.worker.broken == "the engine's helper process died"
    with pytest.raises(PeerGoneError):  # it takes no new request: the frontend sends it elsewhere
        await harness.call("after")
    assert not harness.exits  # the request in flight is still draining
    harness.backend.gate.set()
    answer = service_pb2.ModelInferResponse.FromString(await asyncio.wait_for(in_flight, WAIT))
    assert answer.id == "before"  # drained: answered, not dropped
    await asyncio.wait_for(harness.exited.wait(), WAIT)
    assert harness.exits == [EXIT_BACKEND_BROKEN] == [6]
    assert not harness.backend.stopped  # a broken engine is not asked to stop: it may hang


async def test_a_request_that_never_ends_does_not_keep_a_broken_worker_alive(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_module, "BROKEN_DRAIN_TIMEOUT", 0.5)
    stuck = asyncio.ensure_future(harness.call("stuck"))
    await until(lambda: harness.backend.running == 1, WAIT, "the request to reach the backend")
    harness.backend.break_now()
    await asyncio.wait_for(harness.exited.wait(), WAIT)
    assert harness.exits == [6]
    with pytest.raises(PeerGoneError, match="shutting down"):  # cancelled at the end of the drain, and told
        await asyncio.wait_for(stuck, WAIT)


async def test_a_second_report_changes_nothing(harness: Harness) -> None:
    in_flight = asyncio.ensure_future(harness.call("held"))  # holds the drain open while we look
    await until(lambda: harness.backend.running == 1, WAIT, "the request to reach the backend")
    harness.backend.break_now()
    harness.backend.break_now()
    await until(lambda: harness.worker.broken is not None, WAIT, "the report to reach the worker")
    endings = [task for task in asyncio.all_tasks() if task.get_name() == "dyntriton-worker-broken"]
    assert len(endings) == 1
    harness.backend.gate.set()
    await asyncio.wait_for(in_flight, WAIT)
    await asyncio.wait_for(endings[0], WAIT)
    assert harness.exits == [6]


def test_no_shipped_plugin_ends_the_process_itself() -> None:
    """``os._exit`` (or ``os.abort``) under plugins/ would skip the worker's withdrawal and drain."""
    import ast
    from pathlib import Path

    offenders = []
    for path in (Path(__file__).resolve().parents[2] / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"_exit", "abort"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                offenders.append(f"{path.name}:{node.lineno} os.{node.attr}")
    assert offenders == []
