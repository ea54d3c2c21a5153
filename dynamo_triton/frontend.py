"""The frontend interface: a protocol server (KServe gRPC, HTTP...) over the routing core.

A frontend plugin registers ``factory(settings, service) -> Frontend``. The
``service`` is the runtime's view of every model that live workers serve; the
frontend parses and validates requests, then hands the request *bytes* to
``service.infer`` and relays the response bytes it yields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2, service_pb2

    from dynamo_triton.dtypes import DTypeTable
    from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
    from dynamo_triton.runtime.sequences import SequenceStep

__all__ = [
    "Frontend",
    "FrontendFactory",
    "FrontendSettings",
    "InferenceService",
    "ModelRepository",
    "RepositoryModel",
    "ServedModel",
]


@dataclass(frozen=True)
class FrontendSettings:
    """Where and how a frontend listens.

    :param host: interface to bind.
    :param port: TCP port (0 = any free port).
    :param options: frontend-specific options (TLS files, message size limit...).
    """

    host: str = "0.0.0.0"
    port: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedModel:
    """A model as the frontend sees it: what the workers published in their model cards.

    :param instances: how many live worker instances serve it now.
    :param server_version: the version of the inference server the workers embed (Triton's), or "".
    """

    name: str
    version: str
    config: model_config_pb2.ModelConfig
    metadata: service_pb2.ModelMetadataResponse
    decoupled: bool
    instances: int
    server_version: str = ""


@dataclass(frozen=True)
class RepositoryModel:
    """One entry of ``RepositoryIndex``, in Triton's words.

    :param state: ``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE``, or "" for a model never loaded.
    :param reason: why it is in that state (Triton's load error, ``unloaded``), or "".
    """

    name: str
    version: str = ""
    state: str = ""
    reason: str = ""


@runtime_checkable
class ModelRepository(Protocol):
    """The model repository extension over the whole cluster (docs/model-control.md).

    ``timeout`` is the caller's deadline in seconds (None: the implementation's default). Errors
    are :class:`~dynamo_triton.errors.DyntritonError` with the protocol's status.
    """

    async def index(self, *, ready: bool = False) -> list[RepositoryModel]:
        """Every model of the workers' repositories (only READY ones with ``ready``), sorted by name."""

    async def load(
        self,
        name: str,
        *,
        config: str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Load or reload ``name`` (Triton's ``config`` and ``file:<path>`` parameters); returns once every worker
        that has it answered and it is ready on at least one, or raises with the workers' errors
        (INVALID_ARGUMENT for a bad request)."""

    async def unload(self, name: str, *, timeout: float | None = None) -> None:
        """Unload ``name`` everywhere: returns once no worker that takes model control serves it."""


@runtime_checkable
class InferenceService(Protocol):
    """The routing core a frontend serves from.

    Frontends run requests through :class:`dynamo_triton.runtime.pipeline.RequestPipeline`
    (parse, validate, route, count), which uses ``metrics`` and ``dtypes`` from here.

    :ivar metrics: the frontend process's metrics (shared by every protocol frontend).
    :ivar dtypes: the dtype table, core rows plus plugin rows, that requests are validated with.
    :ivar repository: model control over the cluster (``RepositoryModelLoad`` / ``Unload`` /
        ``RepositoryIndex``), or None where it is not offered (load and unload answer UNIMPLEMENTED).

    An implementation may also have ``shared_memory``, a
    :class:`~dynamo_triton.runtime.shared_memory.SharedMemoryRegistry` (Triton's system shared-memory
    extension; frontends read it with ``getattr``, absent or None: not offered).
    """

    metrics: FrontendMetrics
    dtypes: DTypeTable
    repository: ModelRepository | None

    def ready(self) -> bool:
        """True when at least one model has a live instance."""

    def models(self) -> list[ServedModel]:
        """Every model with at least one live instance, sorted by name."""

    def model(self, name: str, version: str = "") -> ServedModel:
        """The model, or raise ModelNotFoundError naming the models that are served."""

    def infer(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        sequence: SequenceStep | None = None,
        queue_timeout: float | None = None,
        priority: int = 0,
    ) -> AsyncIterator[bytes]:
        """Route a serialized ``ModelInferRequest`` to an instance; yield serialized responses.

        Raises NoInstanceError (UNAVAILABLE) when no instance can take it, after one
        retry on another instance if the first failed before answering. A request with
        a ``sequence`` goes to the instance its sequence is pinned to (docs/sequences.md).

        :param timeout: the caller's deadline, in seconds from now: the request ends then, wherever it is.
        :param queue_timeout: Triton's ``timeout`` parameter, in seconds: a request not sent to a worker
            by then is answered DEADLINE_EXCEEDED (once running, it runs to its end).
        :param priority: Triton's ``priority`` parameter (0: the model's default level; lower goes first).
        :raises OverloadedError: admission control shed the request at once (RESOURCE_EXHAUSTED).
        """

    async def statistics(self, name: str = "") -> service_pb2.ModelStatisticsResponse:
        """Statistics gathered from every live instance (all models when ``name`` is empty)."""


@runtime_checkable
class Frontend(Protocol):
    """A running protocol server."""

    async def start(self) -> None:
        """Bind and serve; raises ConfigError naming the port if it is taken."""

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop accepting and end open calls within ``grace`` seconds."""

    @property
    def port(self) -> int:
        """The bound port (after start)."""


class FrontendFactory(Protocol):
    """What a frontend plugin registers."""

    def __call__(self, settings: FrontendSettings, service: InferenceService) -> Frontend: ...
