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

import click

from dynamo_triton.errors import ConfigError
from dynamo_triton.settings import setting

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2, service_pb2

    from dynamo_triton.dtypes import DTypeTable
    from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
    from dynamo_triton.runtime.sequences import SequenceStep

#: A TCP port: 0-65535, 0 meaning any free port (click says "x is not in the range 0<=x<=65535").
PORT = click.IntRange(0, 65535)

__all__ = [
    "PORT",
    "Frontend",
    "FrontendFactory",
    "FrontendSettings",
    "InferenceService",
    "ModelRepository",
    "RepositoryModel",
    "ServedModel",
    "restricted_setting",
]


def _restrictions(grpc: bool) -> Any:
    def check(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        from dynamo_triton.runtime.restrictions import parse_restrictions

        try:
            parse_restrictions(value, grpc=grpc)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value

    return check


def restricted_setting(flag: str, envvar: str, *, grpc: bool) -> Any:
    """A frontend's field of Triton's restricted protocol specs (``--grpc-restricted-protocol``,
    ``--http-restricted-api``), checked when given (:mod:`dynamo_triton.runtime.restrictions`)."""
    header = "triton-grpc-protocol-<key>" if grpc else "<key>"
    refusal = "UNAVAILABLE" if grpc else "403"
    return setting(
        (),
        flag,
        envvar=envvar,
        multiple=True,
        callback=_restrictions(grpc),
        metavar="GROUPS:KEY=VALUE",
        help=f"Triton's restricted {'protocols' if grpc else 'APIs'}: calls of the comma-separated groups "
        f"(health, metadata, inference, shared-memory, model-config, model-repository, statistics, trace, "
        f"logging) need the header {header} with VALUE, or are refused ({refusal}) as Triton refuses them. "
        "Repeatable; a group in one spec only (docs/security.md).",
    )


@dataclass(frozen=True)
class FrontendSettings:
    """Where and how a frontend listens: the settings every protocol frontend shares.

    A frontend plugin registers a settings class extending this one
    (``register("http", factory, settings=HttpSettings)``) that declares its own ``host`` and
    ``port`` options (``--http-host``, ``--http-port``) and whatever else it needs; the common
    options below are declared here once and shown once (the "Frontend" panel of ``--help``).

    :param host: interface to bind.
    :param port: TCP port (0 = any free port; below 0: the frontend is not started).
    :param server_name: the name server metadata reports.
    :param tls_cert: PEM certificate of the frontend's TLS (with ``tls_key``); None: clear text.
    :param tls_key: its private key.
    :param tls_client_ca: PEM CA client certificates must be signed by (mutual TLS).
    :param reuse_port: bind with ``SO_REUSEPORT`` (set by the command: several frontend processes).
    :param max_connection_age: with ``reuse_port``, seconds a connection lives before its client is
        asked to reconnect (0: off; the command sets 0 without ``reuse_port``).
    :param options: frontend-specific options, for frontends registered without a settings class.
    """

    __panel__ = "Frontend (every protocol)"

    host: str = "0.0.0.0"
    port: int = 0
    server_name: str = setting(
        "triton",
        "--server-name",
        envvar="DYN_SERVER_NAME",
        help="Name ServerMetadata reports (Triton's clients expect 'triton').",
    )
    tls_cert: str | None = setting(
        None,
        "--tls-cert",
        envvar="DYN_TLS_CERT",
        type=click.Path(dir_okay=False),
        help="The frontend's TLS certificate (PEM), on every frontend port: gRPC and HTTP (REST, /health, "
        "/metrics are then HTTPS). One certificate, because clients dial one host name for every port "
        "and asking for TLS should leave no port in clear text; --no-http-tls keeps HTTP plain. With --tls-key.",
    )
    tls_key: str | None = setting(
        None,
        "--tls-key",
        envvar="DYN_TLS_KEY",
        type=click.Path(dir_okay=False),
        help="PEM private key of --tls-cert (unencrypted; readable by this user only).",
    )
    tls_client_ca: str | None = setting(
        None,
        "--tls-client-ca",
        envvar="DYN_TLS_CLIENT_CA",
        type=click.Path(dir_okay=False),
        help="PEM CA client certificates must be signed by (mutual TLS): on every port, so that REST is no "
        "way around it; clients without one are refused.",
    )
    max_connection_age: float = setting(
        5.0,
        "--max-connection-age",
        envvar="DYN_MAX_CONNECTION_AGE",
        type=click.FloatRange(min=0),
        help="With shared ports (--reuse-port, several frontend processes): seconds a gRPC connection lives "
        "before the frontend asks its client to open a new one (GOAWAY; gRPC clients do it without failing "
        "a call), and so the longest a draining frontend waits for its clients to move to another process. "
        "0: off (a draining frontend then cancels the calls that reach it late).",
    )
    reuse_port: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """TLS needs both cert and key, and a client CA needs them; raises ConfigError otherwise."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")

    def serves_tls(self) -> bool:
        """True when this frontend's port speaks TLS (a frontend may keep its port plain: ``--no-http-tls``)."""
        return bool(self.tls_cert)

    def describe(self) -> str:
        """`` (TLS)``, `` (TLS, client certificates)`` or "", for the start line."""
        if not self.serves_tls():
            return ""
        return " (TLS" + (", client certificates" if self.tls_client_ca else "") + ")"

    def listener(self, address: str) -> str:
        """How a client reaches this frontend at ``address`` (``host:port``), for the start line:
        ``KServe gRPC 127.0.0.1:8787 (TLS)``. A frontend may override it (HTTP shows its URL)."""
        label = getattr(self, "__label__", "") or "frontend"
        return f"{label} {address}{self.describe()}"


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

    def __call__(self, settings: Any, service: InferenceService, /) -> Frontend: ...
