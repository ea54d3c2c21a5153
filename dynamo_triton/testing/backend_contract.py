"""The Backend contract (dynamo_triton/backend.py), as a test class any backend plugin can run.

Subclass :class:`BackendContract` in a test module and provide a ``backend`` fixture yielding a
*started* backend whose repository holds the models named by the class attributes (loaded or
not: the suite loads what it needs), and stopping it afterwards::

    import pytest, pytest_asyncio
    from dynamo_triton.backend import BackendSettings
    from dynamo_triton.plugins import make_plugin_manager
    from dynamo_triton.testing.backend_contract import BackendContract

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    class TestMyBackend(BackendContract):
        decoupled_model = None  # this backend has no decoupled model: those tests are skipped

        @pytest_asyncio.fixture(scope="module", loop_scope="module")
        async def backend(self):
            engine = make_plugin_manager().backend("mine", BackendSettings(model_repository="repo"))
            await engine.start()
            yield engine
            await engine.stop()

What the suite needs from the repository, and how to say a part does not apply (set it to None):

- ``identity_model``: one input ``identity_input`` and one output ``identity_output`` of datatype
  ``identity_datatype``, the output the input's bytes (``identity_shape``: the shape sent).
- ``decoupled_model``: a decoupled model answering one response per element of its INT32 input
  ``decoupled_input``, each carrying that element as INT32 ``decoupled_output``;
  ``decoupled_delay_input`` (optional, UINT32 milliseconds before each response) lets the suite
  make a stream slow enough to cancel in the middle (None: the cancel test is skipped).
- ``missing_model``: a name the repository does not have.

The suite leaves the backend as it found it (a model it unloads is loaded again). The backend
fixture may be module-scoped (an engine is slow to start); mark the module's tests with the same
loop scope. Needs pytest-asyncio in auto mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton.backend import Backend, ModelInfo
from dynamo_triton.dtypes import default_table
from dynamo_triton.errors import DyntritonError, ModelNotFoundError
from dynamo_triton.tensors import array_from_raw, array_to_raw
from dynamo_triton.testing.wait import until

__all__ = ["BackendContract", "infer_request", "outputs"]

#: Seconds any single step of the suite may take before it fails instead of hanging.
STEP = 30.0


def infer_request(model: str, tensors: Mapping[str, tuple[str, np.ndarray]], request_id: str = "contract-1") -> Any:
    """A ``ModelInferRequest`` for ``model`` with each ``name: (datatype, array)`` in ``raw_input_contents``."""
    message = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, (datatype, array) in tensors.items():
        item = message.inputs.add(name=name, datatype=datatype)
        item.shape.extend(array.shape)
        message.raw_input_contents.append(array_to_raw(array, datatype))
    return message


def outputs(response: Any) -> dict[str, np.ndarray]:
    """A response's outputs by name, as arrays read from ``raw_output_contents``."""
    return {
        tensor.name: array_from_raw(raw, tensor.datatype, tensor.shape)
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def _all(stream: AsyncIterator[Any]) -> list[Any]:
    async def gather() -> list[Any]:
        return [item async for item in stream]

    return await asyncio.wait_for(gather(), STEP)


class BackendContract:
    """Behaviour every Backend must have (see dynamo_triton/backend.py)."""

    identity_model: str = "identity"
    identity_input: str = "INPUT0"
    identity_output: str = "OUTPUT0"
    identity_datatype: str = "INT32"
    identity_shape: tuple[int, ...] = (1, 16)
    decoupled_model: str | None = "repeat"
    decoupled_input: str = "IN"
    decoupled_output: str = "OUT"
    decoupled_delay_input: str | None = "DELAY_MS"
    missing_model: str = "no_such_model_in_the_contract_repository"

    # -- helpers ---------------------------------------------------------------------------------
    def identity_data(self) -> np.ndarray:
        """The tensor sent to the identity model: every byte distinct enough to catch a reordering."""
        count = int(np.prod(self.identity_shape))
        dtype = default_table().by_kserve(self.identity_datatype).numpy
        return (np.arange(count) - count // 2).astype(dtype).reshape(self.identity_shape)

    async def _loaded(self, backend: Backend, name: str) -> ModelInfo:
        try:
            return backend.model(name)
        except ModelNotFoundError:
            return await asyncio.wait_for(backend.load_model(name), STEP)

    def _decoupled(self) -> str:
        if self.decoupled_model is None:
            pytest.skip("this backend declares no decoupled model (decoupled_model = None)")
        return self.decoupled_model

    # -- health and identity ---------------------------------------------------------------------
    async def test_a_started_backend_is_ready_and_names_its_server(self, backend: Backend) -> None:
        assert await backend.ready() is True
        name, version = backend.server_identity()
        assert isinstance(name, str) and name, "server_identity() must name the embedded server"
        assert isinstance(version, str)

    # -- model control, config and metadata ------------------------------------------------------
    async def test_the_repository_index_lists_the_identity_model(self, backend: Backend) -> None:
        index = await backend.repository_index()
        assert self.identity_model in index

    async def test_load_reports_config_and_metadata(self, backend: Backend) -> None:
        info = await self._loaded(backend, self.identity_model)
        assert info.name == self.identity_model and info.version
        assert info.config.name == self.identity_model
        assert [tensor.name for tensor in info.config.input] == [self.identity_input]
        assert [tensor.name for tensor in info.config.output] == [self.identity_output]
        assert info.metadata.name == self.identity_model
        assert [(t.name, t.datatype) for t in info.metadata.inputs] == [(self.identity_input, self.identity_datatype)]
        assert [t.name for t in info.metadata.outputs] == [self.identity_output]
        assert info.decoupled is False
        assert backend.model(self.identity_model).name == self.identity_model

    async def test_unload_then_load_again(self, backend: Backend) -> None:
        await self._loaded(backend, self.identity_model)
        await asyncio.wait_for(backend.unload_model(self.identity_model), STEP)
        try:
            with pytest.raises(ModelNotFoundError):
                backend.model(self.identity_model)
            with pytest.raises(DyntritonError) as refused:
                await _all(backend.infer(infer_request(self.identity_model, self._identity_inputs())))
            assert refused.value.status in {"NOT_FOUND", "UNAVAILABLE"}, refused.value
        finally:
            info = await asyncio.wait_for(backend.load_model(self.identity_model), STEP)
        assert info.name == self.identity_model
        await self.test_infer_returns_the_exact_bytes(backend)

    async def test_an_unknown_model_is_not_found_everywhere(self, backend: Backend) -> None:
        with pytest.raises(ModelNotFoundError) as loading:
            await asyncio.wait_for(backend.load_model(self.missing_model), STEP)
        assert self.missing_model in str(loading.value), "the error must name the model asked for"
        assert loading.value.status == "NOT_FOUND"
        with pytest.raises(ModelNotFoundError):
            backend.model(self.missing_model)
        with pytest.raises(ModelNotFoundError):
            await asyncio.wait_for(backend.unload_model(self.missing_model), STEP)
        with pytest.raises(DyntritonError) as inferring:
            await _all(backend.infer(infer_request(self.missing_model, self._identity_inputs())))
        assert inferring.value.status == "NOT_FOUND", inferring.value

    # -- inference -------------------------------------------------------------------------------
    def _identity_inputs(self) -> dict[str, tuple[str, np.ndarray]]:
        return {self.identity_input: (self.identity_datatype, self.identity_data())}

    async def test_infer_returns_the_exact_bytes(self, backend: Backend) -> None:
        await self._loaded(backend, self.identity_model)
        data = self.identity_data()
        [response] = await _all(backend.infer(infer_request(self.identity_model, self._identity_inputs(), "exact")))
        assert response.model_name == self.identity_model and response.id == "exact"
        [tensor] = response.outputs
        assert (tensor.name, tensor.datatype, list(tensor.shape)) == (
            self.identity_output,
            self.identity_datatype,
            list(data.shape),
        )
        assert [bytes(raw) for raw in response.raw_output_contents] == [data.tobytes()]

    async def test_infer_serialized_answers_the_same_as_infer(self, backend: Backend) -> None:
        await self._loaded(backend, self.identity_model)
        message = infer_request(self.identity_model, self._identity_inputs(), "serialized")
        [expected] = await _all(backend.infer(message))
        chunks = await _all(backend.infer_serialized(message))
        assert len(chunks) == 1
        chunk = chunks[0]
        joined = b"".join(bytes(part) for part in chunk) if isinstance(chunk, list | tuple) else bytes(chunk)
        assert service_pb2.ModelInferResponse.FromString(joined) == expected

    async def test_concurrent_requests_each_get_their_own_answer(self, backend: Backend) -> None:
        await self._loaded(backend, self.identity_model)
        base = self.identity_data()
        messages = [
            infer_request(self.identity_model, {self.identity_input: (self.identity_datatype, base + i)}, f"c{i}")
            for i in range(8)
        ]
        answers = await asyncio.gather(*(_all(backend.infer(message)) for message in messages))
        for i, [response] in enumerate(answers):
            assert response.id == f"c{i}"
            assert bytes(response.raw_output_contents[0]) == (base + i).tobytes()

    async def test_a_bad_input_is_invalid_argument(self, backend: Backend) -> None:
        await self._loaded(backend, self.identity_model)
        wrong_name = {"NOT_AN_INPUT": (self.identity_datatype, self.identity_data())}
        with pytest.raises(DyntritonError) as unknown_input:
            await _all(backend.infer(infer_request(self.identity_model, wrong_name)))
        assert unknown_input.value.status == "INVALID_ARGUMENT", unknown_input.value
        other, numpy_type = ("FP64", np.float64) if self.identity_datatype != "FP64" else ("INT8", np.int8)
        wrong_type = {self.identity_input: (other, np.ones(self.identity_shape, numpy_type))}
        with pytest.raises(DyntritonError) as bad_type:
            await _all(backend.infer(infer_request(self.identity_model, wrong_type)))
        assert bad_type.value.status == "INVALID_ARGUMENT", bad_type.value
        await self.test_infer_returns_the_exact_bytes(backend)  # and the backend still serves

    # -- decoupled / streaming, cancellation -----------------------------------------------------
    async def test_a_decoupled_model_streams_one_response_per_element(self, backend: Backend) -> None:
        name = self._decoupled()
        info = await self._loaded(backend, name)
        assert info.decoupled is True
        values = np.array([5, -6, 7, 8], dtype=np.int32)
        responses = await _all(backend.infer(infer_request(name, {self.decoupled_input: ("INT32", values)})))
        assert [int(outputs(r)[self.decoupled_output].reshape(-1)[0]) for r in responses] == values.tolist()

    async def test_closing_a_stream_early_cancels_it(self, backend: Backend) -> None:
        name = self._decoupled()
        if self.decoupled_delay_input is None:
            pytest.skip("this backend declares no way to slow a stream down (decoupled_delay_input = None)")
        await self._loaded(backend, name)
        stream = backend.infer(self._slow_stream(name, self.decoupled_delay_input))
        first = await asyncio.wait_for(stream.__anext__(), STEP)
        assert int(outputs(first)[self.decoupled_output].reshape(-1)[0]) == 0
        # Closing must end the request, not wait for its 99 remaining seconds.
        await asyncio.wait_for(stream.aclose(), STEP)  # type: ignore[attr-defined]
        quick = infer_request(name, {self.decoupled_input: ("INT32", np.array([1, 2], np.int32))})
        assert len(await _all(backend.infer(quick))) == 2  # the model is free again

    async def test_cancelling_the_consumer_cancels_the_request(self, backend: Backend) -> None:
        name = self._decoupled()
        if self.decoupled_delay_input is None:
            pytest.skip("this backend declares no way to slow a stream down (decoupled_delay_input = None)")
        await self._loaded(backend, name)
        slow = self._slow_stream(name, self.decoupled_delay_input)
        received: list[Any] = []

        async def consume() -> None:
            async for response in backend.infer(slow):
                received.append(response)

        task = asyncio.ensure_future(consume())
        await until(lambda: bool(received), STEP, "the slow stream's first response")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, STEP)
        quick = infer_request(name, {self.decoupled_input: ("INT32", np.array([1, 2], np.int32))})
        assert len(await _all(backend.infer(quick))) == 2  # the model is free again

    def _slow_stream(self, name: str, delay_input: str) -> Any:
        """A request streaming 100 responses a second apart."""
        return infer_request(
            name,
            {
                self.decoupled_input: ("INT32", np.arange(100, dtype=np.int32)),
                delay_input: ("UINT32", np.array([1000], np.uint32)),
            },
        )

    # -- statistics ------------------------------------------------------------------------------
    async def test_statistics_answer_for_a_served_model(self, backend: Backend) -> None:
        await self.test_infer_returns_the_exact_bytes(backend)
        stats = await asyncio.wait_for(backend.statistics(self.identity_model), STEP)
        assert [entry.name for entry in stats.model_stats] == [self.identity_model]
