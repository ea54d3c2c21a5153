"""The one request pipeline every protocol frontend serves through: parse → validate → route → count.

A frontend turns its wire format into a ``ModelInferRequest`` (gRPC receives one
already serialized; REST builds one from JSON or binary tensors) and hands it to
a :class:`RequestPipeline`; the pipeline finds the model, validates the request
against the model's config with the frontend's dtype table, extracts the
sequence step, routes the *bytes* to a worker and keeps the metrics. Every
request counts once: received, then exactly one of success or failure (by
status code), with its latency.

Metric children are cached per model, so the hot path does no label lookups.
Failures of requests for a model nobody serves are counted under ``model="unknown"``
(a client inventing names must not grow the metric set without bound).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynamo_triton.errors import DyntritonError, InvalidRequestError, ModelNotFoundError
from dynamo_triton.runtime.sequences import SequenceStep, sequence_step
from dynamo_triton.runtime.shared_memory_requests import OutputPlan, SharedTensors, references, resolve
from dynamo_triton.runtime.validation import validate_request
from dynamo_triton.tensors import Raw
from dynamo_triton.wire import split_field

if TYPE_CHECKING:
    from tritonclient.grpc import service_pb2

    from dynamo_triton.frontend import InferenceService, ServedModel
    from dynamo_triton.runtime.frontend_metrics import FrontendMetrics

__all__ = ["PreparedRequest", "RequestPipeline", "parse_infer_request", "queue_parameters"]

UNKNOWN_MODEL = "unknown"


#: Requests at least this big are read without copying their tensors (wire.split_field);
#: below it protobuf's own parse is faster.
SPLIT_ABOVE = 64 * 1024


def parse_infer_request(raw: Raw) -> tuple[service_pb2.ModelInferRequest, list[memoryview] | None]:
    """Parse serialized ``ModelInferRequest`` bytes; InvalidRequestError when they are not one.

    :return: the request and, for a large one, its ``raw_input_contents`` as views into ``raw``
        (the returned message then has no ``raw_input_contents``); None when they stayed inside.
    """
    from tritonclient.grpc import service_pb2

    try:
        if len(raw) < SPLIT_ABOVE:
            return service_pb2.ModelInferRequest.FromString(raw), None
        header, views = split_field(raw, service_pb2.ModelInferRequest.RAW_INPUT_CONTENTS_FIELD_NUMBER)
        return service_pb2.ModelInferRequest.FromString(header), views
    except Exception as exc:  # protobuf's DecodeError and WireError derive from Exception only
        raise InvalidRequestError(
            f"the request is not a valid ModelInferRequest ({exc})",
            hint="send a KServe v2 ModelInferRequest, e.g. with tritonclient",
        ) from exc


def queue_parameters(request: service_pb2.ModelInferRequest) -> dict[str, Any]:
    """Triton's ``timeout`` (µs, as seconds ``queue_timeout``) and ``priority`` request parameters, when set.

    The result goes to ``InferenceService.infer`` as keyword arguments (empty for most requests).
    """
    parameters = request.parameters
    if not parameters:
        return {}
    found: dict[str, Any] = {}
    timeout = parameters.get("timeout")
    if timeout is not None:
        micros = timeout.int64_param or timeout.uint64_param
        if micros > 0:
            found["queue_timeout"] = micros / 1e6
    priority = parameters.get("priority")
    if priority is not None:
        found["priority"] = int(priority.uint64_param or priority.int64_param)
    return found


@dataclass(slots=True)
class PreparedRequest:
    """A validated request, ready to route.

    :param request: the parsed request (read-only from here on).
    :param raw: its serialized bytes: what the worker receives, untouched.
    :param raw_inputs: the tensors' bytes when they were taken out of ``request`` (views into ``raw``).
    :param served: the model as the routing table sees it.
    :param sequence: the sequence the request belongs to, or None.
    :param started: ``time.perf_counter()`` when the request arrived.
    :param shared: the tensors the request has in shared-memory regions (None: none); such a request is
        validated once :meth:`RequestPipeline.stream` read its inputs from their regions.
    :param outputs: where the outputs asked into regions go (set by :meth:`RequestPipeline.stream`).
    :param trace: the request's OpenTelemetry trace when it is sampled (``runtime/tracing.py``), else None.
    """

    request: service_pb2.ModelInferRequest
    raw: bytes
    served: ServedModel
    sequence: SequenceStep | None
    started: float
    raw_inputs: list[memoryview] | None = None
    shared: SharedTensors | None = None
    outputs: OutputPlan | None = None
    trace: Any = None

    @property
    def model(self) -> str:
        return self.served.name

    @property
    def request_id(self) -> str:
        return self.request.id


class _ModelMetrics:
    """Metric children of one (model, protocol), resolved once."""

    __slots__ = ("_failures", "_metrics", "_model", "_protocol", "in_flight", "latency", "requests")

    def __init__(self, metrics: FrontendMetrics, model: str, protocol: str):
        self._metrics, self._model, self._protocol = metrics, model, protocol
        self.requests = metrics.requests.labels(model, protocol)
        self.latency = metrics.latency.labels(model, protocol)
        self.in_flight = metrics.in_flight.labels(model)
        self._failures: dict[str, Any] = {}

    def failed(self, status: str) -> None:
        child = self._failures.get(status)
        if child is None:
            child = self._failures[status] = self._metrics.failures.labels(self._model, self._protocol, status)
        child.inc()


class RequestPipeline:
    """Parse, validate, route and count inference requests for one protocol (``grpc``, ``http``...).

    :param service: the routing core; its ``metrics`` and ``dtypes`` are used.
    :param protocol: the ``protocol`` label of this frontend's metrics.
    """

    def __init__(self, service: InferenceService, protocol: str):
        self.service, self.protocol = service, protocol
        self.metrics: FrontendMetrics = service.metrics
        self._dtypes = service.dtypes
        self._by_model: dict[str, _ModelMetrics] = {}
        #: The service's unary fast path, when it has one (RoutingService.infer_unary).
        self._infer_unary: Callable[..., Awaitable[bytes | None]] | None = getattr(service, "infer_unary", None)

    def _model_metrics(self, model: str) -> _ModelMetrics:
        entry = self._by_model.get(model)
        if entry is None:
            entry = self._by_model[model] = _ModelMetrics(self.metrics, model, self.protocol)
        return entry

    def failed(self, model: str, error: DyntritonError) -> None:
        """Count a failure the frontend found before :meth:`prepare` (e.g. a request that does not parse)."""
        self._model_metrics(model or UNKNOWN_MODEL).failed(error.status)

    # -- parse and validate ----------------------------------------------------------------------
    def parse(self, raw: Raw) -> tuple[service_pb2.ModelInferRequest, list[memoryview] | None]:
        """Parse request bytes (see :func:`parse_infer_request`); a failure is counted (model unknown) and raised."""
        try:
            return parse_infer_request(raw)
        except DyntritonError as exc:
            self.failed(UNKNOWN_MODEL, exc)
            raise

    def prepare(
        self,
        request: service_pb2.ModelInferRequest,
        raw: bytes | None = None,
        *,
        raw_inputs: list[memoryview] | None = None,
    ) -> PreparedRequest:
        """Find the model, validate ``request`` against its config, extract its sequence step.

        :param raw: ``request`` serialized, when the frontend has the bytes already (else serialized here).
        :param raw_inputs: the tensors, when :meth:`parse` took them out of ``request``.
        :raises DyntritonError: NOT_FOUND for an unknown model or version, UNAVAILABLE when no worker
            serves it now, INVALID_ARGUMENT for a request the model cannot run. Counted before raising.
        """
        started = time.perf_counter()
        label = UNKNOWN_MODEL
        try:
            if not request.model_name:
                raise ModelNotFoundError(
                    "the request names no model (model_name is empty)", hint="set model_name to a served model"
                )
            served = self.service.model(request.model_name, request.model_version)
            label = served.name
            shared = references(request)
            if shared is None:  # else validated once its inputs are read from their regions
                validate_request(request, served.config, table=self._dtypes, raw_inputs=raw_inputs)
            sequence = sequence_step(request)
        except DyntritonError as exc:
            self._model_metrics(label).failed(exc.status)
            raise
        self._model_metrics(label).requests.inc()
        return PreparedRequest(
            request=request,
            raw=request.SerializeToString() if raw is None else raw,
            served=served,
            sequence=sequence,
            started=started,
            raw_inputs=raw_inputs,
            shared=shared,
        )

    # -- route -----------------------------------------------------------------------------------
    def prepare_bytes(self, raw: bytes) -> PreparedRequest:
        """:meth:`parse` then :meth:`prepare`: what a frontend receiving serialized requests calls."""
        request, raw_inputs = self.parse(raw)
        return self.prepare(request, raw, raw_inputs=raw_inputs)

    async def unary(self, prepared: PreparedRequest, *, timeout: float | None = None) -> bytes:
        """Run a request of a non-decoupled model; its one serialized ``ModelInferResponse``.

        The worker's response stream is read to its end (so the call finishes cleanly on the
        worker: no cancel is sent after a complete answer).
        """
        if prepared.served.decoupled:
            error = InvalidRequestError(
                f"ModelInfer RPC doesn't support models with decoupled transaction policy: use "
                f"ModelStreamInfer for model '{prepared.model}'"
            )
            self._model_metrics(prepared.model).failed(error.status)
            if prepared.trace is not None:
                prepared.trace.end(error.status)
            raise error
        answer: bytes | None = None
        if (
            self._infer_unary is not None
            and prepared.shared is None
            and prepared.sequence is None
            and prepared.trace is None  # a traced request takes the path its spans are recorded on
        ):
            answer = await self._unary(prepared, timeout)
        else:
            async for chunk in self.stream(prepared, timeout=timeout):
                if answer is None:
                    answer = chunk
        if answer is None:
            raise DyntritonError(f"model '{prepared.model}' sent no response", status="INTERNAL")
        return answer

    async def _unary(self, prepared: PreparedRequest, timeout: float | None) -> bytes | None:
        """The fast path of :meth:`unary` (no regions, no sequence, not traced): the service's ``infer_unary``,
        counted exactly as :meth:`stream` counts."""
        assert self._infer_unary is not None
        metrics = self._model_metrics(prepared.model)
        metrics.in_flight.inc()
        status = "CANCELLED"
        request = prepared.request
        try:
            if request.parameters:
                answer = await self._infer_unary(
                    prepared.model, prepared.raw, timeout=timeout, **queue_parameters(request)
                )
            else:
                answer = await self._infer_unary(prepared.model, prepared.raw, timeout=timeout)
            status = "OK"
            return answer
        except DyntritonError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            metrics.in_flight.dec()
            metrics.latency.observe(time.perf_counter() - prepared.started)
            if status != "OK":
                metrics.failed(status)

    async def stream(self, prepared: PreparedRequest, *, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Run a request; yield each serialized ``ModelInferResponse`` (one, or any number when decoupled).

        Exactly one outcome is counted: success when the worker's stream ends, else the error's
        status (``CANCELLED`` when the caller stops early or is cancelled).
        """
        metrics = self._model_metrics(prepared.model)
        metrics.in_flight.inc()
        status = "CANCELLED"
        queueing = queue_parameters(prepared.request)
        if prepared.trace is not None:
            queueing["trace"] = prepared.trace
        try:
            if prepared.shared is not None:
                await self._read_regions(prepared)
            plan = prepared.outputs
            async for chunk in self.service.infer(
                prepared.model, prepared.raw, timeout=timeout, sequence=prepared.sequence, **queueing
            ):
                yield chunk if plan is None else plan.apply(chunk)
            status = "OK"
        except DyntritonError as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            metrics.in_flight.dec()
            metrics.latency.observe(time.perf_counter() - prepared.started)
            if status != "OK":
                metrics.failed(status)
            if prepared.trace is not None:
                prepared.trace.end(status)

    async def _read_regions(self, prepared: PreparedRequest) -> None:
        """Turn a request naming shared-memory regions into an ordinary one, then validate it."""
        assert prepared.shared is not None
        registry = getattr(self.service, "shared_memory", None)
        on_host = getattr(self.service, "on_host", None)
        local = (
            registry is not None
            and on_host is not None
            and prepared.sequence is None  # a sequence may be pinned to any worker
            and on_host(prepared.model, registry.host)
        )
        request, raw, checks, plan = await resolve(
            prepared.request, prepared.raw_inputs, prepared.shared, registry, self._dtypes, local=local
        )
        validate_request(request, prepared.served.config, table=self._dtypes, raw_inputs=checks)
        prepared.request, prepared.raw, prepared.raw_inputs, prepared.outputs = request, raw, None, plan
        prepared.shared = None
