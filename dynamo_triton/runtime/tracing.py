"""OpenTelemetry traces of inference requests, frontend → request plane → worker → Triton.

Switched on at start with Triton's spelling (``--trace-config mode=opentelemetry``,
``--trace-config opentelemetry,url=http://host:4318/v1/traces``, ``level=TIMESTAMPS``, ``rate=N``,
``count=N``), then steered like Triton through the trace extension (``/v2/trace/setting``).

What one traced request produces (one trace id; the client's W3C ``traceparent``/``tracestate``
header or gRPC metadata is the root's parent when it sent one)::

    frontend  "<model> infer"            model, protocol, status  (parse/validate/route .. last answer)
      ├─ "admission"                     the wait for a worker slot
      └─ "request plane"                 the call to one worker (instance, address)
    worker      └─ "worker"              the worker's handling of the request
    Triton        └─ "triton request"    REQUEST_START .. REQUEST_END (Triton's own timestamps)
                      ├─ "triton queue"  QUEUE_START .. COMPUTE_START
                      └─ "triton compute"  COMPUTE_START .. COMPUTE_END, with "compute input",
                                            "compute infer" and "compute output" children

How the context crosses to the worker without touching the transports' frames: the frontend
appends one ``parameters`` map entry to the serialized ``ModelInferRequest`` it forwards (a
length-delimited field appended to a message merges into its map; no tensor is re-encoded):
key :data:`TRACE_PARAMETER`, value the request-plane span's ``traceparent`` and, after one space,
the ``tracestate``. The worker strips it from the request it parsed before the backend sees it
(:meth:`WorkerTracing.take`), so a model only ever sees the parameters its client sent. The key
is reserved: a client's own parameter of that name is taken out too.

Cost when off: the frontend checks one boolean (``RequestTracing.on``) and creates nothing; the
worker checks whether the request has parameters at all (most have none), then looks up one key.
The OpenTelemetry SDK is imported only when tracing is switched on (it is the ``trace`` extra:
``pip install 'dynamo-triton[trace]'``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import service_pb2

from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.runtime.trace_config import TraceConfig

__all__ = [
    "CURRENT",
    "TRACE_PARAMETER",
    "FrontendTrace",
    "RequestTracing",
    "TraceConfig",
    "WorkerTrace",
    "WorkerTracing",
    "append_context",
    "follow",
    "split_context",
]

log = logging.getLogger(__name__)

#: The reserved request parameter carrying the trace context from a frontend to a worker.
TRACE_PARAMETER = "dyntriton-trace"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# A map field is a repeated entry message whose key is field 1 and value field 2 (protobuf's rule).
_PARAMETERS = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name["parameters"].number
_KEY, _VALUE = 1, 2
_STRING_PARAM = service_pb2.InferParameter.DESCRIPTOR.fields_by_name["string_param"].number


def _entry(value: str) -> bytes:
    parameter = _length_delimited(_STRING_PARAM, value.encode())
    entry = _length_delimited(_KEY, TRACE_PARAMETER.encode()) + _length_delimited(_VALUE, parameter)
    return _length_delimited(_PARAMETERS, entry)


def append_context(raw: bytes, traceparent: str, tracestate: str = "") -> bytes:
    """``raw`` (a serialized ``ModelInferRequest``) with the trace context appended as a parameter."""
    return raw + _entry(f"{tracestate} {traceparent}" if tracestate else traceparent)


def split_context(value: str) -> tuple[str, str]:
    """(traceparent, tracestate) from the parameter's value."""
    state, _, parent = value.rpartition(" ")
    return parent, state


# -- the OpenTelemetry side (imported lazily) -------------------------------------------------------
def _provider(url: str, service: str, settings: Mapping[str, str]) -> Any:
    """A tracer provider exporting over OTLP/HTTP to ``url`` (imports the SDK)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"tracing with OpenTelemetry needs its SDK: {exc}", hint="pip install 'dynamo-triton[trace]'"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=url),
            max_queue_size=int(settings.get("bsp_max_queue_size", 2048)),
            schedule_delay_millis=float(settings.get("bsp_schedule_delay", 5000)),
            max_export_batch_size=int(settings.get("bsp_max_export_batch_size", 512)),
        )
    )
    return provider


def _parent_context(traceparent: str, tracestate: str = "") -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return TraceContextTextMapPropagator().extract(carrier)


def _inject(span: Any) -> tuple[str, str]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier["traceparent"], carrier.get("tracestate", "")


def _status(span: Any, status: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("status", status)
    span.set_status(Status(StatusCode.OK if status == "OK" else StatusCode.ERROR, None if status == "OK" else status))


# -- frontend ---------------------------------------------------------------------------------------
class FrontendTrace:
    """One traced request on a frontend (made by :meth:`RequestTracing.begin`)."""

    __slots__ = ("_admission", "_call", "_tracer", "root")

    def __init__(self, tracer: Any, root: Any):
        self._tracer, self.root = tracer, root
        self._admission: Any = None
        self._call: Any = None

    def _child(self, name: str) -> Any:
        from opentelemetry import trace

        return self._tracer.start_span(name, context=trace.set_span_in_context(self.root))

    def admission_started(self) -> None:
        self._admission = self._child("admission")

    def admitted(self) -> None:
        if self._admission is not None:
            self._admission.end()
            self._admission = None

    def call(self, instance_id: str, address: str, payload: bytes) -> bytes:
        """Start the request-plane span; ``payload`` with its context appended for the worker."""
        self.call_ended("UNAVAILABLE")  # a retry: the previous worker failed before answering
        self._call = span = self._child("request plane")
        span.set_attribute("dyntriton.instance", instance_id)
        span.set_attribute("dyntriton.address", address)
        return append_context(payload, *_inject(span))

    def call_ended(self, status: str) -> None:
        if self._call is not None:
            _status(self._call, status)
            self._call.end()
            self._call = None

    def end(self, status: str) -> None:
        """The request's one outcome (``OK`` or the error's status); ends every open span."""
        self.admitted()
        self.call_ended(status)
        _status(self.root, status)
        self.root.end()


@dataclass
class _Sampler:
    rate: int
    left: int  # -1: no limit
    seen: itertools.count = field(default_factory=itertools.count)

    def take(self) -> bool:
        if self.rate <= 0 or self.left == 0 or next(self.seen) % self.rate:
            return False
        if self.left > 0:
            self.left -= 1
        return True


class RequestTracing:
    """The frontend's tracing switch: :attr:`on` is the one check on the hot path.

    :meth:`configure` takes the start config; :meth:`apply` the cluster's trace settings whenever
    they change (``TraceSettings``: per-model level, rate and count, as Triton's trace extension).
    """

    def __init__(self) -> None:
        self.on = False
        self._config = TraceConfig()
        self._settings: Any = None
        self._samplers: dict[str, _Sampler | None] = {}
        self._tracer: Any = None
        self._provider: Any = None
        self._service = "dyntriton-frontend"

    def configure(self, config: TraceConfig, service: str = "dyntriton-frontend") -> None:
        self._config, self._service = config, service
        from dynamo_triton.runtime.server_settings import TraceSettings

        self.apply(TraceSettings(start=config.as_start()))

    def apply(self, settings: Any) -> None:
        """Take new trace settings (a ``TraceSettings``): tracing is on when any layer traces."""
        self._settings, self._samplers = settings, {}
        levels = [settings.effective(model)["trace_level"] for model in ("", *settings.layers)]
        on = self._config.mode == "opentelemetry" and any(tuple(level) != ("OFF",) for level in levels)
        if on and self._tracer is None:
            self._provider = _provider(self._config.url, self._service, self._config.opentelemetry)
            self._tracer = self._provider.get_tracer("dynamo_triton")
        self.on = on

    def _sampler(self, model: str) -> _Sampler | None:
        if model not in self._samplers:
            values = self._settings.effective(model)
            traced = tuple(values["trace_level"]) != ("OFF",)
            self._samplers[model] = _Sampler(values["trace_rate"], values["trace_count"]) if traced else None
        return self._samplers[model]

    def begin(
        self, model: str, protocol: str, headers: Iterable[tuple[str, Any]], started: float
    ) -> FrontendTrace | None:
        """A trace for this request when its model's settings sample it, else None.

        :param headers: the request's HTTP headers or gRPC metadata (``traceparent``/``tracestate`` read).
        :param started: ``time.perf_counter()`` when the request arrived (the root span starts there).
        """
        sampler = self._sampler(model)
        if sampler is None or not sampler.take():
            return None
        parent, state = "", ""
        for key, value in headers:
            name = key.lower()
            if name == "traceparent":
                parent = value if isinstance(value, str) else bytes(value).decode("latin-1")
            elif name == "tracestate":
                state = value if isinstance(value, str) else bytes(value).decode("latin-1")
        context = _parent_context(parent, state) if parent else None
        start_ns = time.time_ns() - int((time.perf_counter() - started) * 1e9)
        root = self._tracer.start_span(f"{model} infer", context=context, start_time=start_ns)
        root.set_attribute("model", model)
        root.set_attribute("protocol", protocol)
        return FrontendTrace(self._tracer, root)

    def shutdown(self) -> None:
        """Flush and stop the exporter (spans still queued are sent)."""
        if self._provider is not None:
            self._provider.shutdown()


# -- worker -----------------------------------------------------------------------------------------
#: Triton's trace activities (TRITONSERVER_InferenceTraceActivity) used for spans.
REQUEST_START, QUEUE_START, COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END, REQUEST_END = range(7)


class WorkerTrace:
    """One traced request on a worker: the ``worker`` span, and Triton's spans when they arrive."""

    __slots__ = ("_tracer", "span")

    def __init__(self, tracer: Any, span: Any):
        self._tracer, self.span = tracer, span

    def triton_timestamps(self, model: str, stamps: Mapping[int, int], offset_ns: int) -> None:
        """Turn Triton's activity timestamps (steady clock, ns) into spans under the worker span.

        :param offset_ns: added to each timestamp to get Unix time (``time.time_ns() - time.monotonic_ns()``).
        Callable from any thread (the SDK is thread-safe).
        """
        from opentelemetry import trace

        def at(activity: int) -> int | None:
            stamp = stamps.get(activity)
            return None if stamp is None else stamp + offset_ns

        def span(name: str, first: int, last: int, parent: Any) -> Any:
            start, end = at(first), at(last)
            if start is None or end is None:
                return None
            made = self._tracer.start_span(
                name, context=trace.set_span_in_context(parent), start_time=start, attributes={"model": model}
            )
            made.end(end_time=end)
            return made

        request = span("triton request", REQUEST_START, REQUEST_END, self.span)
        if request is None:
            return
        span("triton queue", QUEUE_START, COMPUTE_START, request)
        compute = span("triton compute", COMPUTE_START, COMPUTE_END, request)
        if compute is not None:
            span("compute input", COMPUTE_START, COMPUTE_INPUT_END, compute)
            span("compute infer", COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, compute)
            span("compute output", COMPUTE_OUTPUT_START, COMPUTE_END, compute)

    def end(self, status: str) -> None:
        _status(self.span, status)
        self.span.end()


class WorkerTracing:
    """A worker's side: spans for requests whose frontend traced them (the context in the request).

    Without a configured endpoint the context is still stripped from the request, and nothing is traced.
    """

    def __init__(self, config: TraceConfig | None = None, service: str = "dyntriton-worker"):
        self.config = config or TraceConfig()
        self._tracer: Any = None
        self._provider: Any = None
        if self.config.url:
            self._provider = _provider(self.config.url, service, self.config.opentelemetry)
            self._tracer = self._provider.get_tracer("dynamo_triton")

    def take(self, request: Any) -> WorkerTrace | None:
        """Strip the trace parameter from a parsed ``ModelInferRequest``; its worker span, or None."""
        parameters = request.parameters
        if TRACE_PARAMETER not in parameters:
            return None
        value = parameters[TRACE_PARAMETER].string_param
        del parameters[TRACE_PARAMETER]
        if self._tracer is None:
            return None
        parent, state = split_context(value)
        span = self._tracer.start_span("worker", context=_parent_context(parent, state))
        span.set_attribute("model", request.model_name)
        return WorkerTrace(self._tracer, span)

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


#: The trace of the request a worker is handing to its backend right now (None: not traced). Set by
#: :func:`follow` around the backend's first step only, when it submits the request.
CURRENT: ContextVar[WorkerTrace | None] = ContextVar("dyntriton_trace", default=None)


async def follow(trace: WorkerTrace, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``stream`` (the backend's answers) with ``trace`` current while it submits, and ended after."""
    status = "CANCELLED"
    try:
        token = CURRENT.set(trace)
        try:
            first = await anext(stream, _END)
        finally:
            CURRENT.reset(token)
        if first is not _END:
            yield first
            async for chunk in stream:
                yield chunk
        status = "OK"
    except DyntritonError as exc:
        status = exc.status
        raise
    except Exception:
        status = "INTERNAL"
        raise
    finally:
        trace.end(status)


_END = object()
