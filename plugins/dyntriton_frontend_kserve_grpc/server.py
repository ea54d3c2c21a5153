"""KServe v2 gRPC frontend on grpc.aio.

The inference RPCs are registered with no (de)serializers: ModelInfer receives
the request *bytes*, parses them once to validate and route, forwards the same
bytes to the routing core and returns the worker's response bytes untouched.
ModelStreamInfer wraps each response into a ``ModelStreamInferResponse`` by
prefixing the protobuf field header, without re-encoding the tensor data.

Draining without cancelling a call (options ``reuse_port`` and ``max_connection_age``):
grpc.aio's ``server.stop(grace)`` (grpc core's shutdown) answers CANCELLED to the calls that
reached the process but were not yet picked up by its serving loop, and to the calls clients
start before they see the GOAWAY the shutdown sends; grpc-python cannot send a GOAWAY or stop
listening without shutting down. So a frontend sharing its port with other processes runs
with ``grpc.max_connection_age_ms`` (each connection gets a GOAWAY within the age, ±10 %,
while the server serves: gRPC clients move their next calls to a new connection, and retry
the calls the server had not seen), and :meth:`KServeGrpcFrontend.stop` first stops
listening (``drain.stop_listening``: new connections go to the other processes), keeps
serving until its connections are gone, and only then shuts the server down: nothing is
left to cancel. At the drain timeout, open ModelStreamInfer streams stop reading, answer
what they read and end with UNAVAILABLE (the client reopens its stream elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2

from dynamo_triton.errors import ConfigError, DyntritonError, InvalidRequestError
from dynamo_triton.frontend import FrontendSettings, InferenceService
from dynamo_triton.runtime.identity import server_identity
from dynamo_triton.runtime.pipeline import PreparedRequest, RequestPipeline
from dynamo_triton.runtime.restrictions import parse_restrictions
from dynamo_triton.runtime.streams import StreamFormat, run_stream
from dynamo_triton.runtime.tracing import RequestTracing
from dynamo_triton.settings import promote
from dynamo_triton.wire import field_header
from dyntriton_frontend_kserve_grpc import drain
from dyntriton_frontend_kserve_grpc.options import GrpcSettings
from dyntriton_frontend_kserve_grpc.restricted import RestrictedProtocols
from dyntriton_frontend_kserve_grpc.settings import settings_handlers
from dyntriton_frontend_kserve_grpc.shared_memory import shared_memory_handlers

__all__ = ["KServeGrpcFrontend", "stream_response_bytes"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
IMPLEMENTED = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
}
#: Implemented when the service offers model control (``InferenceService.repository``).
MODEL_CONTROL = {"RepositoryModelLoad", "RepositoryModelUnload"}


def bind_failure(host: str, port: int) -> str | None:
    """Why grpc could not bind ``host:port`` (grpc core only says it failed): the OS's reason for a bind
    of our own (``address already in use``), or None when such a bind succeeds."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host.strip("[]"), port))
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    except (TypeError, ValueError) as exc:
        return f"the address is not valid ({exc})"
    return None


def stream_response_bytes(infer_response: bytes) -> bytes:
    """``ModelStreamInferResponse(infer_response=...)`` built by prefixing field 2's header: no re-parse."""
    return field_header(2, len(infer_response)) + infer_response


def _code(error: DyntritonError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.status, grpc.StatusCode.INTERNAL)


class KServeGrpcFrontend:
    """The Frontend protocol (dynamo_triton.frontend) for KServe v2 gRPC."""

    def __init__(self, settings: FrontendSettings, service: InferenceService):
        own: GrpcSettings = (
            settings if isinstance(settings, GrpcSettings) else promote(GrpcSettings, settings)
        )  # the common settings only: gRPC's own take defaults
        settings = self.settings = own
        self.service = service
        self.metrics = service.metrics
        self.pipeline = RequestPipeline(service, "grpc")
        self.tracing: RequestTracing = getattr(service, "tracing", None) or RequestTracing()
        self.stream_pipeline = RequestPipeline(service, "grpc-stream")
        self._stream_window = settings.stream_window
        self._stream_max_pending_bytes = settings.stream_max_pending_bytes
        self._server_name = settings.server_name or None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self._port = settings.port
        self._max_connection_age = settings.max_connection_age if settings.reuse_port else 0.0
        self._drain_timeout = settings.drain_timeout
        self._streams: dict[asyncio.Task[Any], _Reading] = {}  # reader task -> its stream's requests

    @property
    def port(self) -> int:
        return self._port

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        max_message = self.settings.max_message_size
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_receive_message_length", max_message),
            # Off unless asked: with it on, a second server on a taken port would start silently.
            ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
        ]
        if self._max_connection_age > 0:  # no grace: a long stream is ended by the drain, not by its age
            options.append(("grpc.max_connection_age_ms", max(1, round(self._max_connection_age * 1000))))
        try:  # Triton's --grpc-restricted-protocol specs
            restrictions = parse_restrictions(self.settings.restricted, grpc=True)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # Before the server exists: a server made and never started is freed by the GC on no loop (a crash).
        credentials = self._credentials()
        server = grpc.aio.server(
            options=options, interceptors=[RestrictedProtocols(restrictions)] if restrictions else []
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as exc:  # "Failed to bind to address ...": grpc core keeps the OS's reason to itself
            port = 0
            reason = bind_failure(self.settings.host, self.settings.port) or str(exc)
        else:
            reason = bind_failure(self.settings.host, self.settings.port) or "the address is not valid"
        if not port:
            raise ConfigError(
                f"cannot listen for KServe gRPC on {address}: {reason}",
                hint="pick another port with --grpc-port / DYN_GRPC_PORT (0 = any free port)",
            )
        self._port = port
        await server.start()
        self._server = server
        self._health_task = asyncio.create_task(self._follow_health(), name="dyntriton-grpc-health")

    def _credentials(self) -> grpc.ServerCredentials | None:
        settings = self.settings
        if not settings.tls_cert:
            return None
        if not settings.tls_key:
            raise ConfigError("gRPC TLS needs a key with its certificate", hint="give --tls-key with --tls-cert")
        try:
            cert = Path(settings.tls_cert).read_bytes()
            key = Path(settings.tls_key).read_bytes()
            client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
        except OSError as exc:
            raise ConfigError(f"cannot read a TLS file for the gRPC frontend: {exc}") from exc
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=bool(client_ca)
        )

    async def _follow_health(self) -> None:
        previous = None
        while True:
            ready = self.service.ready()
            if ready != previous:
                status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
                await self._health.set("", status)
                await self._health.set(SERVICE, status)
                previous = ready
            self.metrics.models.set(len(self.service.models()))
            await asyncio.sleep(0.25)

    async def stop(self, *, grace: float = 5.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self._server is not None:
            if self._max_connection_age > 0 and self.settings.reuse_port:
                await self._drain()
            await self._server.stop(grace)
            self._server = None

    async def _drain(self) -> None:
        """Stop listening and serve until the clients left (their connections reach their age), or the timeout.

        Only when another process listens on the port: otherwise the clients have nowhere to go.
        """
        port = self._port
        if not drain.stop_listening(port) or not drain.others_listen(port):
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._drain_timeout
        left = drain.connections(port)
        log.info("gRPC port %d: stopped listening; %d connection(s) to drain", port, left)
        while left:
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)  # polling /proc: grpc core says nothing when a connection closes
            left = drain.connections(port)
        if left:
            streams = len(self._streams)
            for task, requests in list(self._streams.items()):
                requests.ended_by_drain = True
                task.cancel()  # the stream stops reading; what it read is answered, then UNAVAILABLE
            log.warning(
                "gRPC port %d: %d connection(s) still open after the %g s drain timeout (%d stream(s) ended)",
                port,
                left,
                self._drain_timeout,
                streams,
            )
        else:
            log.info("gRPC port %d: every client left in %.2f s", port, loop.time() - started)

    # -- handlers --------------------------------------------------------------------------------
    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(method: Callable[[Any, Any], Awaitable[Any]], request_type: Any, response_type: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        handlers: dict[str, Any] = {
            "ServerLive": unary(self.server_live, service_pb2.ServerLiveRequest, service_pb2.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, service_pb2.ServerReadyRequest, service_pb2.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, service_pb2.ModelReadyRequest, service_pb2.ModelReadyResponse),
            "ServerMetadata": unary(
                self.server_metadata, service_pb2.ServerMetadataRequest, service_pb2.ServerMetadataResponse
            ),
            "ModelMetadata": unary(
                self.model_metadata, service_pb2.ModelMetadataRequest, service_pb2.ModelMetadataResponse
            ),
            "ModelConfig": unary(self.model_config, service_pb2.ModelConfigRequest, service_pb2.ModelConfigResponse),
            "ModelStatistics": unary(
                self.model_statistics, service_pb2.ModelStatisticsRequest, service_pb2.ModelStatisticsResponse
            ),
            "RepositoryIndex": unary(
                self.repository_index, service_pb2.RepositoryIndexRequest, service_pb2.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": unary(
                self.repository_model_load,
                service_pb2.RepositoryModelLoadRequest,
                service_pb2.RepositoryModelLoadResponse,
            ),
            "RepositoryModelUnload": unary(
                self.repository_model_unload,
                service_pb2.RepositoryModelUnloadRequest,
                service_pb2.RepositoryModelUnloadResponse,
            ),
            # Raw bytes in and out: the tensor data passes through untouched.
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        }
        extensions = settings_handlers(getattr(self.service, "settings", None), unary)  # logging, trace
        extensions.update(shared_memory_handlers(self.service))
        handlers.update(extensions)
        descriptor = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        implemented = IMPLEMENTED | (MODEL_CONTROL if self.service.repository is not None else set()) | set(extensions)
        for method in descriptor.methods:
            if method.name not in implemented:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(self._unimplemented(method.name))
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    @staticmethod
    def _unimplemented(name: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def handler(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{name} is not supported by dyntriton: shared memory is not available "
                "through the frontend, and loading models needs a frontend with model control "
                "(dyntriton frontend) and workers started with --model-control explicit",
            )
            raise AssertionError("unreachable")

        return handler

    async def _abort(self, context: grpc.aio.ServicerContext, error: DyntritonError) -> None:
        await context.abort(_code(error), error.message)

    async def server_live(self, _request: Any, _context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def server_ready(self, _request: Any, _context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.service.ready())

    async def model_ready(self, request: Any, _context: Any) -> service_pb2.ModelReadyResponse:
        try:
            self.service.model(request.name, request.version)
        except DyntritonError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    async def server_metadata(self, _request: Any, _context: Any) -> service_pb2.ServerMetadataResponse:
        identity = server_identity(self.service, self._server_name)
        return service_pb2.ServerMetadataResponse(
            name=identity.name, version=identity.version, extensions=list(identity.extensions)
        )

    async def model_metadata(self, request: Any, context: Any) -> Any:
        try:
            return self.service.model(request.name, request.version).metadata
        except DyntritonError as exc:
            await self._abort(context, exc)

    async def model_config(self, request: Any, context: Any) -> Any:
        try:
            return service_pb2.ModelConfigResponse(config=self.service.model(request.name, request.version).config)
        except DyntritonError as exc:
            await self._abort(context, exc)

    async def model_statistics(self, request: Any, context: Any) -> Any:
        try:
            return await self.service.statistics(request.name)
        except DyntritonError as exc:
            await self._abort(context, exc)

    async def repository_index(self, request: Any, context: Any) -> Any:
        response = service_pb2.RepositoryIndexResponse()
        repository = self.service.repository
        if repository is None:  # no model control: what is served is all there is
            for model in self.service.models():
                response.models.add(name=model.name, version=model.version, state="READY")
            return response
        try:
            _no_repository_name(request)
            for entry in await repository.index(ready=request.ready):
                response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
        except DyntritonError as exc:
            await self._abort(context, exc)
        return response

    async def repository_model_load(self, request: Any, context: Any) -> Any:
        """Load or reload a model on the workers that take model control, with Triton's ``config`` and
        ``file:<path>`` parameters; answers once it is ready on one of them (docs/model-control.md)."""
        assert self.service.repository is not None
        try:
            _no_repository_name(request)
            config, files = _load_parameters(request.parameters)
            await self.service.repository.load(
                request.model_name, config=config, files=files, timeout=context.time_remaining()
            )
        except DyntritonError as exc:
            await self._abort(context, exc)
        return service_pb2.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: Any, context: Any) -> Any:
        """Unload a model everywhere (its cards go first, so frontends stop routing to it)."""
        assert self.service.repository is not None
        try:
            _no_repository_name(request)
            dependents = request.parameters.get("unload_dependents")
            if dependents is not None:
                if dependents.WhichOneof("parameter_choice") != "bool_param":
                    raise InvalidRequestError(
                        "invalid value type for 'unload_dependents' parameter, expected bool_param."
                    )
                if dependents.bool_param:
                    raise DyntritonError("unload_dependents is not supported by dyntriton", status="UNIMPLEMENTED")
            await self.service.repository.unload(request.model_name, timeout=context.time_remaining())
        except DyntritonError as exc:
            await self._abort(context, exc)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- inference -------------------------------------------------------------------------------
    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            prepared = self.pipeline.prepare_bytes(raw)
            if self.tracing.on:
                prepared.trace = self.tracing.begin(
                    prepared.model, "grpc", context.invocation_metadata(), prepared.started
                )
            return await self.pipeline.unary(prepared, timeout=context.time_remaining())
        except DyntritonError as exc:
            await self._abort(context, exc)
            raise AssertionError("unreachable") from exc

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Triton's stream semantics (request order for non-decoupled models, bounded): runtime/streams.py."""
        reading = _Reading(self._streams)
        answers = run_stream(
            self.stream_pipeline,
            reading.through(requests),
            _GRPC_STREAM,
            window=self._stream_window,
            max_pending_bytes=self._stream_max_pending_bytes,
        )
        try:
            async for answer in answers:  # grpc.aio needs an async generator function here
                yield answer
        finally:
            await answers.aclose()
        if reading.ended_by_drain:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the frontend is shutting down: this stream answered every request it had read and takes no more; "
                "open a new stream",
            )


class _Reading:
    """How a drain stops a stream's reading: :meth:`through` registers the task reading the requests.

    Cancelling that task (the stream's reader in runtime/streams.py) stops the reading; the
    requests already read are still answered.
    """

    def __init__(self, streams: dict[asyncio.Task[Any], _Reading]):
        self._streams = streams
        self.ended_by_drain = False

    async def through(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        task = asyncio.current_task()
        assert task is not None
        self._streams[task] = self
        try:
            async for raw in requests:
                yield raw
        finally:
            self._streams.pop(task, None)


def _no_repository_name(request: Any) -> None:
    if request.repository_name:
        raise DyntritonError("'repository_name' specification is not supported", status="UNIMPLEMENTED")


def _load_parameters(parameters: Mapping[str, Any]) -> tuple[str | None, dict[str, bytes]]:
    """Triton's load parameters from a RepositoryModelLoadRequest: ``config`` (string_param) and
    ``file:<path>`` (bytes_param); anything else is refused as Triton refuses it."""
    config, files = None, {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if key == "config":
            if kind != "string_param":
                raise InvalidRequestError(f"invalid value type for load parameter '{key}', expected string_param.")
            config = parameter.string_param
        elif key.startswith("file:"):
            if kind != "bytes_param":
                raise InvalidRequestError(f"invalid value type for load parameter '{key}', expected bytes_param.")
            files[key[len("file:") :]] = parameter.bytes_param
        else:
            raise InvalidRequestError(f"unrecognized load parameter '{key}'.")
    return config, files


class _GrpcStreamFormat(StreamFormat):
    """Answers framed as serialized ``ModelStreamInferResponse`` messages."""

    def response(self, prepared: PreparedRequest, chunk: bytes) -> bytes:
        return stream_response_bytes(chunk)

    def final(self, prepared: PreparedRequest) -> bytes | None:
        enable = prepared.request.parameters.get("triton_enable_empty_final_response")
        if enable is None or not enable.bool_param:
            return None
        final = service_pb2.ModelInferResponse(model_name=prepared.model, id=prepared.request_id)
        final.parameters["triton_final_response"].bool_param = True
        return stream_response_bytes(final.SerializeToString())

    def error(self, model: str, request_id: str, error: DyntritonError) -> bytes:
        answer = service_pb2.ModelStreamInferResponse(error_message=error.message)
        answer.infer_response.model_name = model
        answer.infer_response.id = request_id
        return answer.SerializeToString()


_GRPC_STREAM = _GrpcStreamFormat()
