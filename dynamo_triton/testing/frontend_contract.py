"""The Frontend contract (dynamo_triton/frontend.py), as a test class any frontend plugin can run.

A frontend serves some protocol over an :class:`~dynamo_triton.frontend.InferenceService`. The
suite starts the frontend on a free port over a service, talks to it through a small *protocol
client* the plugin's author writes (:class:`ProtocolClient`: live, ready, infer... in the
protocol's own terms) and checks what every frontend must do: start on a free port and refuse a
taken one, say health, answer requests with the service's exact bytes, give errors the
protocol's status, stream a decoupled model's answers, and on stop answer what is in flight.

Subclass :class:`FrontendContract` and provide two fixtures::

    import pytest
    from dynamo_triton.plugins import make_plugin_manager
    from dynamo_triton.testing.frontend_contract import Capability, FrontendContract

    class TestMyFrontend(FrontendContract):
        capabilities = frozenset(Capability) - {Capability.METADATA, Capability.STREAMING}

        @pytest.fixture
        def frontend_factory(self):
            plugins = make_plugin_manager()
            return lambda settings, service: plugins.frontend("mine", settings, service)

        @pytest.fixture
        def protocol(self):
            return MyProtocolClient  # called with the port: MyProtocolClient(port)

``capabilities`` declares which parts of the protocol the frontend has (a KServe V1 frontend has
no model metadata and no streaming); the tests of the others are skipped, saying why. The
``service`` fixture defaults to :class:`~dynamo_triton.testing.services.ContractService` (a test
double: the frontend's interface *is* the service protocol); override it to run the suite over a
real worker (:func:`~dynamo_triton.testing.services.local_worker_service`): the tests that need
the double's extra models (``repeat``, ``gated``, ``dead``) or its ready switch are then skipped.
Shipped protocol clients: :mod:`dynamo_triton.testing.frontend_protocols`. Needs pytest-asyncio
in auto mode.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pytest

from dynamo_triton.errors import ConfigError
from dynamo_triton.frontend import Frontend, FrontendSettings, InferenceService
from dynamo_triton.testing.services import ContractService
from dynamo_triton.testing.wait import until

__all__ = [
    "Capability",
    "FrontendContract",
    "ModelDescription",
    "ProtocolClient",
    "ProtocolError",
]

#: Seconds any single step may take before the test fails instead of hanging.
STEP = 20.0


class Capability(enum.Enum):
    """Parts of the contract a frontend's protocol may or may not have."""

    #: Server liveness and readiness (readiness follows ``service.ready()``).
    HEALTH = "health"
    #: Per-model readiness.
    MODEL_READY = "model-ready"
    #: Model metadata (name, input and output names).
    METADATA = "metadata"
    #: Errors with the protocol's status: unknown model, bad input, no live instance.
    ERRORS = "errors"
    #: A decoupled model's responses streamed to the client.
    STREAMING = "streaming"
    #: ``stop`` stops accepting and answers the requests in flight.
    DRAIN = "drain"


@dataclass(frozen=True)
class ModelDescription:
    """What a protocol's metadata says about a model."""

    name: str
    inputs: list[str]
    outputs: list[str]


class ProtocolError(Exception):
    """An error answer, with the protocol's status as :attr:`status` (e.g. ``NOT_FOUND`` or ``404``)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class ProtocolClient(Protocol):
    """How the suite talks to a frontend, written once per protocol (built as ``client(port)``).

    Every method raises :class:`ProtocolError` for an error answer; a refused connection may raise
    ProtocolError or OSError. ``statuses`` maps the suite's cases to the status the protocol answers
    them with: ``unknown_model``, ``bad_input``, ``unavailable`` (KServe gRPC: ``NOT_FOUND``,
    ``INVALID_ARGUMENT``, ``UNAVAILABLE``).
    """

    statuses: dict[str, str]

    async def live(self) -> bool:
        """The server says it is live."""

    async def ready(self) -> bool:
        """The server says it is ready (False for a "not ready" answer, not an exception)."""

    async def model_ready(self, model: str) -> bool:
        """The server says ``model`` is ready (False for an unknown model)."""

    async def metadata(self, model: str) -> ModelDescription:
        """The model's metadata."""

    async def infer(self, model: str, data: np.ndarray, *, request_id: str = "") -> np.ndarray:
        """Send ``data`` as the model's one INT32 input; the model's one output."""

    async def stream(self, model: str, data: np.ndarray) -> list[np.ndarray]:
        """Send ``data`` to a decoupled model; the output of each response streamed back."""

    async def close(self) -> None:
        """Release connections."""


class FrontendContract:
    """Behaviour every Frontend must have (see the module docstring)."""

    capabilities: frozenset[Capability] = frozenset(Capability)

    @pytest.fixture
    def service(self) -> InferenceService:
        """The service the frontend serves (default: the contract's double)."""
        return ContractService()

    @pytest.fixture
    async def running(
        self,
        frontend_factory: Callable[[FrontendSettings, InferenceService], Frontend],
        service: InferenceService,
    ) -> AsyncIterator[Frontend]:
        frontend = frontend_factory(FrontendSettings(host="127.0.0.1", port=0), service)
        await asyncio.wait_for(frontend.start(), STEP)
        try:
            yield frontend
        finally:
            await asyncio.wait_for(frontend.stop(grace=1.0), STEP)

    @pytest.fixture
    async def client(self, running: Frontend, protocol: Callable[[int], ProtocolClient]) -> AsyncIterator[Any]:
        client = protocol(running.port)
        try:
            yield client
        finally:
            await client.close()

    # -- helpers ---------------------------------------------------------------------------------
    def needs(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            pytest.skip(f"this frontend declares no {capability.value} (capabilities)")

    @staticmethod
    def double(service: InferenceService) -> ContractService:
        if not isinstance(service, ContractService):
            pytest.skip("needs the contract's service double (ContractService)")
        return service

    @staticmethod
    def data(offset: int = 0) -> np.ndarray:
        return (np.arange(16, dtype=np.int32) - 8 + offset).reshape(1, 16)

    # -- lifecycle -------------------------------------------------------------------------------
    async def test_it_starts_on_a_free_port_and_refuses_a_taken_one(
        self,
        running: Frontend,
        frontend_factory: Callable[[FrontendSettings, InferenceService], Frontend],
        service: InferenceService,
    ) -> None:
        assert running.port > 0
        second = frontend_factory(FrontendSettings(host="127.0.0.1", port=running.port), service)
        with pytest.raises(ConfigError) as taken:
            await asyncio.wait_for(second.start(), STEP)
        assert str(running.port) in str(taken.value), "the error must name the port"

    # -- health ----------------------------------------------------------------------------------
    async def test_live_and_ready(self, client: ProtocolClient) -> None:
        self.needs(Capability.HEALTH)
        assert await asyncio.wait_for(client.live(), STEP) is True
        assert await asyncio.wait_for(client.ready(), STEP) is True

    async def test_ready_follows_the_service(self, client: ProtocolClient, service: InferenceService) -> None:
        self.needs(Capability.HEALTH)
        double = self.double(service)
        double.ready_flag = False
        assert await asyncio.wait_for(client.ready(), STEP) is False
        assert await asyncio.wait_for(client.live(), STEP) is True  # live is about the process, not the models
        double.ready_flag = True
        assert await asyncio.wait_for(client.ready(), STEP) is True

    async def test_model_readiness(self, client: ProtocolClient) -> None:
        self.needs(Capability.MODEL_READY)
        assert await asyncio.wait_for(client.model_ready("identity"), STEP) is True
        assert await asyncio.wait_for(client.model_ready("no_such_model"), STEP) is False

    async def test_metadata(self, client: ProtocolClient) -> None:
        self.needs(Capability.METADATA)
        description = await asyncio.wait_for(client.metadata("identity"), STEP)
        assert description == ModelDescription("identity", ["INPUT0"], ["OUTPUT0"])

    # -- requests --------------------------------------------------------------------------------
    async def test_infer_answers_the_exact_values(self, client: ProtocolClient) -> None:
        data = self.data()
        answer = await asyncio.wait_for(client.infer("identity", data, request_id="exact"), STEP)
        assert answer.dtype == np.int32 and answer.shape == data.shape
        assert answer.tobytes() == data.tobytes()

    async def test_concurrent_requests_each_get_their_own_answer(self, client: ProtocolClient) -> None:
        answers = await asyncio.wait_for(
            asyncio.gather(*(client.infer("identity", self.data(i), request_id=f"c{i}") for i in range(8))), STEP
        )
        for i, answer in enumerate(answers):
            assert answer.tobytes() == self.data(i).tobytes()

    async def test_an_unknown_model_is_an_error_with_the_protocols_status(self, client: ProtocolClient) -> None:
        self.needs(Capability.ERRORS)
        with pytest.raises(ProtocolError) as caught:
            await asyncio.wait_for(client.infer("no_such_model", self.data()), STEP)
        assert caught.value.status == client.statuses["unknown_model"], caught.value
        assert "no_such_model" in caught.value.message

    async def test_a_bad_input_is_an_error_with_the_protocols_status(self, client: ProtocolClient) -> None:
        self.needs(Capability.ERRORS)
        three_dims = np.zeros((1, 2, 3), dtype=np.int32)  # identity takes [batch, n]
        with pytest.raises(ProtocolError) as caught:
            await asyncio.wait_for(client.infer("identity", three_dims), STEP)
        assert caught.value.status == client.statuses["bad_input"], caught.value
        await self.test_infer_answers_the_exact_values(client)  # and it still serves

    async def test_no_live_instance_is_an_error_with_the_protocols_status(
        self, client: ProtocolClient, service: InferenceService
    ) -> None:
        self.needs(Capability.ERRORS)
        self.double(service)
        with pytest.raises(ProtocolError) as caught:
            await asyncio.wait_for(client.infer("dead", self.data()), STEP)
        assert caught.value.status == client.statuses["unavailable"], caught.value

    async def test_a_decoupled_model_streams_every_response(
        self, client: ProtocolClient, service: InferenceService
    ) -> None:
        self.needs(Capability.STREAMING)
        double = self.double(service)
        answers = await asyncio.wait_for(client.stream("repeat", self.data()), STEP)
        assert [answer.tobytes() for answer in answers] == [self.data().tobytes()] * double.REPEATS

    # -- stop ------------------------------------------------------------------------------------
    async def test_stop_answers_the_requests_in_flight(
        self,
        frontend_factory: Callable[[FrontendSettings, InferenceService], Frontend],
        service: InferenceService,
        protocol: Callable[[int], ProtocolClient],
    ) -> None:
        self.needs(Capability.DRAIN)
        double = self.double(service)
        frontend = frontend_factory(FrontendSettings(host="127.0.0.1", port=0), service)
        await asyncio.wait_for(frontend.start(), STEP)
        client, late = protocol(frontend.port), protocol(frontend.port)
        stopping: asyncio.Future[None] | None = None
        try:
            in_flight = asyncio.ensure_future(client.infer("gated", self.data(), request_id="drain"))
            await until(lambda: double.calls == 1, STEP, "the request to reach the service")
            stopping = asyncio.ensure_future(frontend.stop(grace=STEP))

            async def refuses() -> bool:
                try:
                    await asyncio.wait_for(late.infer("identity", self.data()), STEP)
                except (ProtocolError, OSError):
                    return True
                except TimeoutError:
                    pytest.fail(
                        f"a request sent to the stopping frontend was neither refused nor answered in {STEP:g} s"
                    )
                return False

            await until(refuses, STEP, "the stopping frontend to take no new request")
            assert not stopping.done() and not in_flight.done()  # still waiting for the one in flight
            double.open_gates()  # the one in flight (under its request id, or "" where the protocol has none)
            answer = await asyncio.wait_for(in_flight, STEP)
            assert answer.tobytes() == self.data().tobytes()
            await asyncio.wait_for(stopping, STEP)
        finally:
            double.open_gates()
            if stopping is None:
                await frontend.stop(grace=0)
            await client.close()
            await late.close()
