"""The inference backend interface that backend plugins implement.

A backend runs models in the worker process. It speaks KServe v2 in protobuf
terms (``tritonclient.grpc.service_pb2``), so the worker hands it the request it
received and sends back the responses it yields, without touching tensor data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import click

from dynamo_triton.settings import setting

if TYPE_CHECKING:  # the protobuf modules are heavy; only type checkers need them here
    from tritonclient.grpc import model_config_pb2, service_pb2

    from dynamo_triton.tensors import Raw
    from dynamo_triton.transport import Chunk

__all__ = ["Backend", "BackendFactory", "BackendSettings", "FatalReporting", "ModelInfo", "StandaloneServer"]


@dataclass(frozen=True)
class BackendSettings:
    """Settings every backend receives; a backend plugin registers a class extending it with its own.

    :param model_repository: folder of a Triton model repository.
    :param backend_directory: where backend shared objects live (None: the backend's default).
    :param log_verbose: Triton-style verbosity, 0 = quiet.
    :param extra: backend-specific options for backends registered without a settings class.
    """

    __panel__ = "Backend (every backend)"

    model_repository: str = setting(
        "model_repo",
        "--model-repository",
        type=click.Path(file_okay=False),
        help="Triton model repository (folders with config.pbtxt and version dirs).",
    )
    backend_directory: str | None = setting(
        None, "--backend-directory", type=click.Path(file_okay=False), help="Triton backends folder."
    )
    log_verbose: int = setting(
        0,
        "--log-verbose",
        type=click.IntRange(min=0),
        help="Triton log verbosity (0 = quiet); above 0 gRPC's own error log is shown too.",
    )
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """What a backend knows about one loaded model.

    :param name: model name as clients address it.
    :param version: the version being served (as a string, KServe style).
    :param config: the model's full Triton ``ModelConfig``.
    :param metadata: the KServe ``ModelMetadataResponse``.
    :param decoupled: True when the model may send zero or many responses per request.
    """

    name: str
    version: str
    config: model_config_pb2.ModelConfig
    metadata: service_pb2.ModelMetadataResponse
    decoupled: bool = False


@runtime_checkable
class Backend(Protocol):
    """A running inference engine in the worker process.

    Lifecycle: ``await start()``, then any number of ``load_model`` /
    ``infer`` / ``unload_model``, then ``await stop()``. Every method may be
    called from the worker's event loop; none blocks it.
    """

    async def start(self) -> None:
        """Start the engine. Raises :class:`~dynamo_triton.errors.BackendError` if it cannot."""

    async def stop(self, *, timeout: float = 30.0) -> None:
        """Stop the engine; requests still in flight end with an error. Never hangs past ``timeout``."""

    async def repository_index(self) -> list[str]:
        """Names of the models the repository holds (loaded or not)."""

    async def load_model(
        self, name: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> ModelInfo:
        """Load (or reload) ``name`` and return what clients need to know about it.

        ``config`` and ``files`` are Triton's load parameters (``RepositoryModelLoad``, see
        docs/model-control.md): ``config`` is a ``ModelConfig`` as JSON used instead of the
        repository's; ``files`` (``"1/model.onnx"`` -> content) is a model directory used instead
        of the repository's, which then need not have the model. A backend without them raises
        InvalidRequestError when they are given.

        Raises :class:`~dynamo_triton.errors.ModelNotFoundError` naming the repository and
        the models it has, or :class:`~dynamo_triton.errors.TritonError` with the engine's
        own message (e.g. a config.pbtxt parse error).
        """

    async def unload_model(self, name: str) -> None:
        """Unload ``name``; unknown names raise ModelNotFoundError."""

    def model(self, name: str) -> ModelInfo:
        """Info of a loaded model; raises ModelNotFoundError if it is not loaded."""

    async def ready(self) -> bool:
        """True while the engine can serve requests."""

    def server_identity(self) -> tuple[str, str]:
        """``(name, version)`` of the inference server the backend embeds, after ``start``.

        Frontends report them in ``ServerMetadata`` (Triton: ``("triton", "2.51.0")``).
        """

    def infer(self, request: service_pb2.ModelInferRequest) -> AsyncIterator[service_pb2.ModelInferResponse]:
        """Run one request; yield its responses (one, or for decoupled models zero or more).

        Outputs come back in ``raw_output_contents``. Closing the iterator early
        (``aclose()`` or cancelling the consuming task) cancels the request in the
        engine. Errors raise subclasses of :class:`~dynamo_triton.errors.DyntritonError`.
        """

    def infer_serialized(
        self, request: service_pb2.ModelInferRequest, raw_inputs: Sequence[Raw] | None = None
    ) -> AsyncIterator[Chunk]:
        """What the worker calls: :meth:`infer` with the tensors where they were received, answers serialized.

        :param raw_inputs: the inputs' bytes, one per ``request.inputs`` in order, when the worker took
            them out of the request (views into the received buffer, valid until the iterator ends);
            None when they are in ``request.raw_input_contents`` (or typed contents).
        :return: each response serialized as a ``ModelInferResponse``: bytes, or a list of bytes-like
            parts that, sent back to back, are one (a header and then the tensor buffers, not joined).
        """

    # Optional: ``async metrics_text() -> str``, the engine's own metrics in Prometheus text format
    # (Triton: the ``nv_*`` families); the worker's system port appends them to its ``/metrics``.

    async def statistics(self, name: str = "") -> Any:
        """``service_pb2.ModelStatisticsResponse`` for one model, or all when ``name`` is empty."""


@runtime_checkable
class StandaloneServer(Protocol):
    """What a backend that embeds a server with a standalone form of its own adds (optional).

    Tests compare dyntriton's answers with that server's (``dynamo_triton.testing.tritonserver``
    runs Triton's ``tritonserver`` this way); nothing needs to be started to ask.
    """

    def standalone_server(self) -> tuple[list[str], dict[str, str]]:
        """``(argv, environment)`` that run the engine this backend embeds as its own server, with the
        same engine libraries and backends (protocol ports and the repository are the caller's to add).

        Raises :class:`~dynamo_triton.errors.BackendError` saying how to install one when there is none.
        """


@runtime_checkable
class FatalReporting(Protocol):
    """What a backend that can break beyond repair in-process adds (optional).

    The worker registers a callback at start. A backend that broke that way (the Triton backend:
    a python backend stub died, which Triton cannot restart) keeps answering requests for the
    broken model with UNAVAILABLE and calls the callback once, with the reason; it never ends
    the process itself. The worker then withdraws its model cards, drains, and its command exits
    with ``EXIT_BACKEND_BROKEN`` (6) so that its supervisor starts a new one.
    """

    def on_fatal(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` (on the event loop, at most once) when the engine broke beyond repair."""


class BackendFactory(Protocol):
    """What a backend plugin registers: ``factory(settings) -> Backend`` (cheap to call)."""

    def __call__(self, settings: Any, /) -> Backend: ...
