"""A Pythonic, asyncio-friendly Triton server over the raw C API in ``capi.py``.

Threading model: blocking C calls (server start/stop, model load) run in worker
threads; inference is asynchronous in Triton. Triton calls our allocator,
response and release callbacks on its own threads; they never raise (an
exception there would look like success to Triton), and hand results to the
request's event loop with ``call_soon_threadsafe``.

Memory: input tensors are not copied. Triton reads them straight from the
``bytes`` objects of the request, kept alive until Triton releases the request.
Outputs are written into buffers this module allocates and frees.

Classification: outputs a request asks as classifications are ranked in the response callback,
while Triton's response is alive, because their labels (``label_filename``) are read from it
(``TRITONSERVER_InferenceResponseOutputClassificationLabel``, valid until the response is
deleted); labels are never cached, so a model reloaded with new labels answers with the new ones.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dynamo_triton.errors import BackendError, DyntritonError, TritonError
from dynamo_triton.runtime.tracing import CURRENT
from dyntriton_backend_triton import capi, classification
from dyntriton_backend_triton.completions import EVENT_RELEASED, EVENT_RESPONSE, Completions, load_completions
from dyntriton_backend_triton.environment import load_library
from dyntriton_backend_triton.fastpath import FastPath
from dyntriton_backend_triton.locator import TritonInstall
from dyntriton_backend_triton.tracing import TritonTraces

__all__ = [
    "STUB_UNHEALTHY",
    "ClassificationSpec",
    "InputTensor",
    "OutputTensor",
    "ServerOptions",
    "TritonResponse",
    "TritonServer",
    "cuda_driver_present",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    """Options of an embedded server (model control is always EXPLICIT: we load what we serve).

    :param model_load_retries: times Triton retries a model whose load failed. Triton's own
        default retries, which made a model whose ``initialize()`` raises fail after 81 s and
        ~48 tracebacks; 0 fails at the first error.
    :param metrics: collect Triton's ``nv_*`` metrics (read with :meth:`TritonServer.metrics_text`).
    :param cpu_metrics: also collect ``nv_cpu_*`` utilisation and memory (polled by Triton).
    :param c_callbacks: answer Triton's callbacks with the C completions library when it was built
        (no GIL taken on Triton's threads); False forces the ctypes callbacks.
    :param fast_path: with the C callbacks, serve plain unary requests of the worker in C
        (``fastpath.py``); False sends every request through :meth:`TritonServer.infer`.
    """

    model_repository: Path
    backend_directory: Path
    log_verbose: int = 0
    log_info: bool = False
    strict_model_config: bool = True
    exit_timeout: int = 10
    metrics: bool = True
    cpu_metrics: bool = True
    model_load_retries: int = 0
    server_id: str = "dyntriton"
    c_callbacks: bool = True
    fast_path: bool = True


@dataclass(frozen=True)
class InputTensor:
    """An input as Triton needs it; ``data`` must stay alive (we keep it until release)."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: bytes | bytearray | memoryview


@dataclass(frozen=True)
class OutputTensor:
    """An output; ``data`` is a view of the buffer Triton wrote it into (ours, kept alive by the view)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


def _address_of(data: bytes | bytearray | memoryview) -> tuple[int | None, object]:
    """The address of ``data``'s first byte, and the object to keep alive while Triton reads it."""
    if isinstance(data, bytes):
        pointer = ctypes.c_char_p(data)  # the bytes object's own buffer
        return ctypes.cast(pointer, ctypes.c_void_p).value, pointer
    if not len(data):
        return None, data
    view = np.frombuffer(data, dtype=np.uint8)  # read-only views work too; no copy
    return view.ctypes.data, view


class _Region(ctypes.Structure):
    """An output asked into a shared-memory region (``dt_region`` of _completions.c)."""

    _fields_ = (("name", ctypes.c_char_p), ("base", ctypes.c_void_p), ("size", ctypes.c_uint64))


class _Regions(ctypes.Structure):
    """The allocator's userp for a request with outputs in regions (``dt_regions`` of _completions.c)."""

    _fields_ = (("count", ctypes.c_uint64), ("regions", ctypes.POINTER(_Region)))


@dataclass(frozen=True)
class OutputRegion:
    """Where Triton writes output ``name``: ``size`` bytes of mapped shared memory at ``address``.

    The mapping must outlive the request (``TritonServer.infer``'s ``hold``).
    """

    name: str
    address: int
    size: int


def _regions_userp(regions: Sequence[OutputRegion]) -> tuple[int | None, object]:
    """The allocator userp listing ``regions`` (None when there are none), and what keeps it alive."""
    if not regions:
        return None, None
    names = [region.name.encode() for region in regions]
    entries = (_Region * len(regions))(
        *(_Region(name, region.address, region.size) for name, region in zip(names, regions, strict=True))
    )
    table = _Regions(len(regions), ctypes.cast(entries, ctypes.POINTER(_Region)))
    return ctypes.addressof(table), (names, entries, table)


def _region_too_small(name: str, room: int, needed: int) -> str:
    return (
        f"shared memory size specified with the request for output '{name}' ({room} bytes) should be at least "
        f"{needed} bytes to hold the results"
    )


@dataclass(frozen=True)
class ClassificationSpec:
    """Outputs of a request to answer as classifications (see ``classification.py``).

    :param counts: output name -> K, the number of classes asked (already validated).
    :param batched: the model has a batch dimension (``max_batch_size > 0``): rank each item.
    """

    counts: Mapping[str, int]
    batched: bool


@dataclass
class TritonResponse:
    """One response of a request: outputs, or an error (Triton's or a classification's); ``final`` marks the last."""

    outputs: list[OutputTensor] = field(default_factory=list)
    error: DyntritonError | None = None
    final: bool = False
    request_id: str = ""


def cuda_driver_present() -> bool:
    """True when the CUDA driver library loads (a host where Triton can use GPUs)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


#: What Triton's python backend says when the stub process of a model instance died or froze.
STUB_UNHEALTHY = "is not healthy"


class _Error:
    """Turn TRITONSERVER_Error pointers into TritonError, freeing them."""

    def __init__(self, api: capi.TritonLib):
        self.api = api

    def take(self, err: int | None, *, free: bool = True) -> TritonError | None:
        if not err:
            return None
        code = self.api.ErrorCode(err)
        message = (self.api.ErrorMessage(err) or b"").decode(errors="replace")
        if free:
            self.api.ErrorDelete(err)
        return self.make(code, message)

    @staticmethod
    def make(code: int, message: str) -> TritonError:
        """The TritonError for Triton's error ``code`` and ``message``."""
        name = capi.ERROR_CODE_NAMES[code] if 0 <= code < len(capi.ERROR_CODE_NAMES) else "UNKNOWN"
        if name == "INTERNAL" and STUB_UNHEALTHY in message:
            # The python backend restarts a dead stub on its next request; this request never ran:
            # UNAVAILABLE lets the frontend retry it on another instance (Triton says INTERNAL).
            return TritonError("UNAVAILABLE", message, hint="the model's python backend stub died; its worker restarts")
        return TritonError(name, message)

    def check(self, err: int | None, what: str = "") -> None:
        error = self.take(err)
        if error is not None:
            if what:
                error.message = f"{what}: {error.message}"
                error.args = (error.message,)
            raise error


class _Inflight:
    """State of one request between InferAsync and its final response + release."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, keepalive: list[Any], classification: ClassificationSpec | None = None
    ):
        self.loop = loop
        self.classification = classification
        self.queue: asyncio.Queue[TritonResponse] = asyncio.Queue()
        self.keepalive = keepalive
        self.request: int | None = None
        self.lock = threading.Lock()
        self.released = False
        self.finished = False
        self.hold: object = None  # shared-memory mappings and the allocator's region list, for the request's life

    def done(self) -> None:
        """Triton released the request and its last response: close what it held (unmap its regions)."""
        hold, self.hold = self.hold, None
        close = getattr(hold, "close", None) if hold is not None else None
        if close is not None:
            close()


class _Held:
    """What a request holds until Triton is done with it; ``close`` closes the caller's part."""

    __slots__ = ("_caller", "_table")

    def __init__(self, caller: object, table: object):
        self._caller, self._table = caller, table

    def close(self) -> None:
        close = getattr(self._caller, "close", None)
        if close is not None:
            close()
        self._caller = self._table = None


class _Callbacks(NamedTuple):
    """The callbacks Triton holds raw pointers to (they must outlive the server)."""

    alloc: Any
    release: Any
    start: Any
    response_done: Any
    request_released: Any


class TritonServer:
    """One embedded Triton Inference Server (one per process: Triton keeps process-wide state)."""

    def __init__(self, install: TritonInstall, options: ServerOptions):
        self.install, self.options = install, options
        self._api: capi.TritonLib | None = None
        self._errors: _Error | None = None
        self._server: int | None = None
        self._allocator: int | None = None
        self._inflight: dict[int, _Inflight] = {}
        self._ids = itertools.count(1)
        self._buffers: dict[int, np.ndarray] = {}
        self._callbacks: _Callbacks | None = None
        self._completions: Completions | None = None
        self._triton_traces: TritonTraces | None = None  # made at the first traced request
        self._fast: FastPath | None = None
        self._library: ctypes.CDLL | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def api(self) -> capi.TritonLib:
        if self._api is None:
            raise BackendError("the Triton server is not started")
        return self._api

    def _check(self, err: int | None, what: str = "") -> None:
        assert self._errors is not None
        self._errors.check(err, what)

    def start_blocking(self) -> None:
        """Load the library and create the server (blocking; call from a thread)."""
        self._library = load_library(self.install)
        self._api = capi.declare(self._library)
        self._errors = _Error(self._api)
        api, o = self._api, self.options
        options = ctypes.c_void_p()
        self._check(api.ServerOptionsNew(ctypes.byref(options)), "creating server options")
        try:
            self._check(api.ServerOptionsSetServerId(options, o.server_id.encode()))
            self._check(api.ServerOptionsSetModelRepositoryPath(options, str(o.model_repository).encode()))
            self._check(api.ServerOptionsSetModelControlMode(options, capi.MODEL_CONTROL_EXPLICIT))
            self._check(api.ServerOptionsSetStrictModelConfig(options, o.strict_model_config))
            self._check(api.ServerOptionsSetBackendDirectory(options, str(o.backend_directory).encode()))
            self._check(api.ServerOptionsSetLogVerbose(options, o.log_verbose))
            self._check(api.ServerOptionsSetLogInfo(options, o.log_info or o.log_verbose > 0))
            self._check(api.ServerOptionsSetLogWarn(options, True))
            self._check(api.ServerOptionsSetLogError(options, True))
            self._check(api.ServerOptionsSetExitTimeout(options, o.exit_timeout))
            self._check(api.ServerOptionsSetMetrics(options, o.metrics))
            self._check(api.ServerOptionsSetGpuMetrics(options, False))
            self._check(api.ServerOptionsSetCpuMetrics(options, o.metrics and o.cpu_metrics))
            self._check(api.ServerOptionsSetPinnedMemoryPoolByteSize(options, 0))
            self._check(api.ServerOptionsSetModelLoadRetryCount(options, max(0, o.model_load_retries)))
            server = ctypes.c_void_p()
            cpu_only = not cuda_driver_present()
            if cpu_only:
                # Triton 2.51 logs "CudaDriverHelper has not been initialized." as an ERROR while it
                # starts on a host without a CUDA driver, though it then runs CPU-only as intended.
                # Logging flags are process-wide in Triton: mute errors for ServerNew only (its
                # failures come back as the returned error, not as log lines).
                api.ServerOptionsSetLogError(options, False)
            try:
                self._check(api.ServerNew(ctypes.byref(server), options), "starting Triton")
            finally:
                if cpu_only:
                    api.ServerOptionsSetLogError(options, True)
            self._server = server.value
            if cpu_only:
                log.info("no CUDA driver on this host: Triton runs CPU-only (KIND_CPU instance groups)")
        finally:
            api.ServerOptionsDelete(options)
        self._make_allocator()

    def set_log(self, *, info: bool, warning: bool, error: bool, verbose: int, iso8601: bool) -> None:
        """Triton's process-wide log flags, now: ``TRITONSERVER_ServerOptionsSetLog*`` set Triton's logger
        at once whatever options object they get (Triton's own frontends call them with none)."""
        api = self.api
        self._check(api.ServerOptionsSetLogInfo(None, info), "setting log_info")
        self._check(api.ServerOptionsSetLogWarn(None, warning), "setting log_warning")
        self._check(api.ServerOptionsSetLogError(None, error), "setting log_error")
        self._check(api.ServerOptionsSetLogVerbose(None, verbose), "setting log_verbose_level")
        self._check(api.ServerOptionsSetLogFormat(None, 1 if iso8601 else 0), "setting log_format")

    def _make_allocator(self) -> None:
        """Triton's callbacks: the C completions library when it was built, else ctypes callbacks."""
        api = self.api
        self._completions = load_completions() if self.options.c_callbacks else None
        completions = self._completions
        if completions is not None:
            api.hold_gil(capi.REQUEST_PATH)  # no Triton thread ever waits for the GIL now
            alloc = capi.ALLOC_FN(completions.address("dt_alloc"))
            release = capi.RELEASE_FN(completions.address("dt_release"))
            response_done = capi.RESPONSE_COMPLETE_FN(completions.address("dt_response_complete"))
            request_released = capi.REQUEST_RELEASE_FN(completions.address("dt_request_release"))
        else:
            alloc = capi.ALLOC_FN(self._alloc)
            release = capi.RELEASE_FN(self._release_buffer)
            response_done = capi.RESPONSE_COMPLETE_FN(self._on_response)
            request_released = capi.REQUEST_RELEASE_FN(self._on_release)
        start = ctypes.cast(None, capi.START_FN)
        # Triton holds raw pointers to these: they must outlive the server.
        self._callbacks = _Callbacks(alloc, release, start, response_done, request_released)
        allocator = ctypes.c_void_p()
        self._check(api.ResponseAllocatorNew(ctypes.byref(allocator), alloc, release, start), "creating allocator")
        self._allocator = allocator.value
        if completions is not None and self.options.fast_path and self._library is not None:
            lib = completions.bind(self._library)
            if lib is not None:
                assert self._errors is not None and self._server is not None
                errors = self._errors
                self._fast = FastPath(
                    lib, self._server, self._allocator, errors.make, lambda err: errors.take(err), completions.own
                )

    @property
    def fast(self) -> FastPath | None:
        """The C fast path for plain unary requests (see ``fastpath.py``), or None without the C library."""
        return self._fast if not self._stopping else None

    def attach(self) -> None:
        """Drain the C library's completions on the running loop (before submitting on the fast path)."""
        if self._completions is not None:
            self._completions.attach(asyncio.get_running_loop(), self._on_event)

    def stop_blocking(self) -> None:
        """Stop the server; in-flight requests end with an error. Bounded by the exit timeout."""
        if self._server is None:
            return
        self._stopping = True
        api = self.api
        for inflight in list(self._inflight.values()):
            self._cancel(inflight)
        fast = self._fast
        loop = self._completions._loop if self._completions is not None else None
        if fast is not None:
            # The calls belong to the loop's thread (it frees them): cancel them there.
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(fast.cancel_all)
            else:
                fast.cancel_all()
        err = api.ServerStop(self._server)
        if err:
            log.warning("Triton stop: %s", self._errors.take(err) if self._errors else err)
        for key, inflight in list(self._inflight.items()):
            self._deliver(inflight, TritonResponse(error=TritonError("UNAVAILABLE", "Triton stopped"), final=True), key)
        if fast is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fast.fail_all, TritonError("UNAVAILABLE", "Triton stopped"))
        err = api.ServerDelete(self._server)
        if err:
            log.warning("Triton delete: %s", self._errors.take(err) if self._errors else err)
        self._server = None
        if self._allocator is not None:
            api.ResponseAllocatorDelete(self._allocator)
            self._allocator = None

    # -- queries ---------------------------------------------------------------------------------
    def _message_json(self, message: int) -> Any:
        base, size = ctypes.c_void_p(), ctypes.c_size_t()
        try:
            self._check(self.api.MessageSerializeToJson(message, ctypes.byref(base), ctypes.byref(size)))
            return json.loads(ctypes.string_at(base, size.value))
        finally:
            self.api.MessageDelete(message)

    def _require_server(self) -> int:
        if self._server is None:
            raise BackendError("the Triton server is not running", status="UNAVAILABLE")
        return self._server

    def is_live(self) -> bool:
        live = ctypes.c_bool()
        self._check(self.api.ServerIsLive(self._require_server(), ctypes.byref(live)))
        return live.value

    def is_ready(self) -> bool:
        ready = ctypes.c_bool()
        self._check(self.api.ServerIsReady(self._require_server(), ctypes.byref(ready)))
        return ready.value

    def server_metadata(self) -> dict[str, Any]:
        message = ctypes.c_void_p()
        self._check(self.api.ServerMetadata(self._require_server(), ctypes.byref(message)))
        return self._message_json(message.value)  # type: ignore[arg-type]

    def model_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        message = ctypes.c_void_p()
        flags = capi.INDEX_FLAG_READY if ready_only else 0
        self._check(self.api.ServerModelIndex(self._require_server(), flags, ctypes.byref(message)))
        return self._message_json(message.value)  # type: ignore[arg-type]

    def load_model(self, name: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) ``name``; raises TritonError with Triton's message on failure. Blocking.

        :param config: a ``ModelConfig`` as JSON, loaded instead of the repository's ``config.pbtxt``
            (Triton's ``config`` load parameter).
        :param files: ``"<version>/<file>"`` -> content: an override model directory Triton writes to a
            temporary folder and loads instead of the repository's (``file:<path>`` parameters; Triton
            then requires ``config``).
        """
        server = self._require_server()
        if config is None and not files:
            self._check(self.api.ServerLoadModel(server, name.encode()))
            return
        api = self.api
        parameters: list[int] = []
        try:
            if config is not None:
                parameters.append(api.ParameterNew(b"config", capi.PARAMETER_STRING, config.encode()))
            for path, content in (files or {}).items():
                # Triton keeps a pointer to ``content`` (alive in ``files``) until ParameterDelete.
                parameters.append(api.ParameterBytesNew(f"file:{path}".encode(), content, len(content)))
            if not all(parameters):
                raise TritonError("INTERNAL", "unexpected error on creating Triton parameter")
            array = (ctypes.c_void_p * len(parameters))(*parameters)
            self._check(api.ServerLoadModelWithParameters(server, name.encode(), array, len(parameters)))
        finally:
            for parameter in parameters:
                if parameter:
                    api.ParameterDelete(parameter)

    def unload_model(self, name: str) -> None:
        self._check(self.api.ServerUnloadModel(self._require_server(), name.encode()))

    def model_ready(self, name: str, version: int = -1) -> bool:
        ready = ctypes.c_bool()
        self._check(self.api.ServerModelIsReady(self._require_server(), name.encode(), version, ctypes.byref(ready)))
        return ready.value

    def model_config(self, name: str, version: int = -1) -> dict[str, Any]:
        message = ctypes.c_void_p()
        self._check(
            self.api.ServerModelConfig(self._require_server(), name.encode(), version, 1, ctypes.byref(message))
        )
        return self._message_json(message.value)  # type: ignore[arg-type]

    def model_metadata(self, name: str, version: int = -1) -> dict[str, Any]:
        message = ctypes.c_void_p()
        self._check(self.api.ServerModelMetadata(self._require_server(), name.encode(), version, ctypes.byref(message)))
        return self._message_json(message.value)  # type: ignore[arg-type]

    def model_statistics(self, name: str = "", version: int = -1) -> dict[str, Any]:
        message = ctypes.c_void_p()
        server = self._require_server()
        self._check(self.api.ServerModelStatistics(server, name.encode(), version, ctypes.byref(message)))
        return self._message_json(message.value)  # type: ignore[arg-type]

    @property
    def in_flight(self) -> int:
        """Requests handed to Triton whose final response has not been delivered yet (or, on the fast path,
        that Triton has not released yet)."""
        return len(self._inflight) + (self._fast.in_flight if self._fast is not None else 0)

    def metrics_text(self) -> str:
        """Triton's own metrics (``nv_*`` families) in Prometheus text format; empty with metrics off."""
        if not self.options.metrics:
            return ""
        metrics = ctypes.c_void_p()
        self._check(self.api.ServerMetrics(self._require_server(), ctypes.byref(metrics)), "reading Triton's metrics")
        try:
            base, size = ctypes.c_void_p(), ctypes.c_size_t()
            self._check(
                self.api.MetricsFormatted(metrics, capi.METRIC_PROMETHEUS, ctypes.byref(base), ctypes.byref(size))
            )
            return ctypes.string_at(base, size.value).decode(errors="replace") if base.value else ""
        finally:
            self.api.MetricsDelete(metrics)

    def is_decoupled(self, name: str, version: int = -1) -> bool:
        flags, voidp = ctypes.c_uint32(), ctypes.c_void_p()
        server = self._require_server()
        self._check(
            self.api.ServerModelTransactionProperties(
                server, name.encode(), version, ctypes.byref(flags), ctypes.byref(voidp)
            )
        )
        return bool(flags.value & capi.TXN_DECOUPLED)

    # -- callbacks (Triton threads; must never raise) --------------------------------------------
    def _alloc(
        self,
        _allocator: int,
        name: bytes,
        byte_size: int,
        _memory_type: int,
        _memory_type_id: int,
        userp: int | None,
        buffer: Any,
        buffer_userp: Any,
        actual_memory_type: Any,
        actual_memory_type_id: Any,
    ) -> int | None:
        try:
            actual_memory_type[0] = capi.MEMORY_CPU
            actual_memory_type_id[0] = 0
            buffer_userp[0] = None
            if userp:  # outputs asked into shared-memory regions: Triton writes there
                wanted = _Regions.from_address(userp)
                for index in range(wanted.count):
                    region = wanted.regions[index]
                    if region.name != name:
                        continue
                    if byte_size > region.size:
                        buffer[0] = None
                        message = _region_too_small(name.decode(), region.size, byte_size)
                        return self.api.ErrorNew(capi.ERROR_CODE_OF_NAME["INTERNAL"], message.encode())
                    buffer[0] = region.base
                    buffer_userp[0] = ctypes.addressof(region)  # non-NULL: not ours to free
                    return None
            if byte_size == 0:
                buffer[0] = None
                return None
            memory = np.empty(byte_size, dtype=np.uint8)  # not zeroed: Triton writes every byte
            address = memory.ctypes.data
            self._buffers[address] = memory
            buffer[0] = address
            return None
        except Exception as exc:  # an exception here would look like success with no buffer
            log.exception("output allocation failed")
            return self.api.ErrorNew(capi.ERROR_CODE_OF_NAME["INTERNAL"], f"output allocation failed: {exc}".encode())

    def _output_data(self, base: int | None, size: int) -> bytes | memoryview:
        """An output's bytes: a view of the buffer we allocated for it (it outlives Triton's release
        through the view), or a copy when Triton put the tensor in memory of its own."""
        if not size or not base:
            return b""
        if self._completions is not None:
            view = self._completions.view(base, size)
            return view if view is not None else ctypes.string_at(base, size)
        memory = self._buffers.get(base)
        if memory is not None and size <= memory.nbytes:
            return memoryview(memory)[:size]
        return ctypes.string_at(base, size)

    def _release_buffer(self, _allocator: int, buffer: int, buffer_userp: int | None, *_rest: Any) -> int | None:
        if buffer and not buffer_userp:  # a region's memory (buffer_userp set) is the client's
            self._buffers.pop(buffer, None)
        return None

    def _on_release(self, request: int, flags: int, userp: int) -> None:
        try:
            inflight = self._inflight.get(userp)
            done = False
            if inflight is not None:
                with inflight.lock:
                    inflight.released = True
                    inflight.request = None
                    inflight.keepalive.clear()  # Triton no longer reads the inputs
                    if inflight.finished:
                        self._inflight.pop(userp, None)
                        done = True
            # Outside the lock: deleting a request may run the response callback on this thread.
            self.api.InferenceRequestDelete(request)
            if done and inflight is not None:
                inflight.done()
        except Exception:
            log.exception("request release callback failed")

    def _on_event(self, kind: int, address: int, flags: int, key: int) -> None:
        """A completion the C library queued, handled on the event loop's thread."""
        if self._server is None:
            return  # the server is gone: its objects must not be touched any more
        if kind == EVENT_RESPONSE:
            self._on_response(address, flags, key, direct=True)
        elif kind == EVENT_RELEASED:
            self._on_release(address, flags, key)
        elif self._fast is not None:
            self._fast.on_event(kind, address, flags, key)

    def _on_response(self, response: int, flags: int, userp: int, direct: bool = False) -> None:
        try:
            inflight = self._inflight.get(userp)
            final = bool(flags & capi.RESPONSE_COMPLETE_FINAL)
            result = TritonResponse(final=final)
            if response:
                try:
                    self._read_response(response, result, inflight.classification if inflight else None)
                except Exception as exc:
                    result.error = TritonError("INTERNAL", f"reading Triton's response failed: {exc}")
                finally:
                    self.api.InferenceResponseDelete(response)
            elif not final:
                return
            if inflight is not None:
                self._deliver(inflight, result, userp, direct=direct)
        except Exception:
            log.exception("response callback failed")

    def _read_response(self, response: int, result: TritonResponse, classes: ClassificationSpec | None) -> None:
        api = self.api
        assert self._errors is not None
        error = self._errors.take(api.InferenceResponseError(response), free=False)  # owned by the response
        if error is not None:
            result.error = error
            return
        request_id = ctypes.c_char_p()
        if not api.InferenceResponseId(response, ctypes.byref(request_id)) and request_id.value:
            result.request_id = request_id.value.decode()
        count = ctypes.c_uint32()
        self._check(api.InferenceResponseOutputCount(response, ctypes.byref(count)))
        name, datatype = ctypes.c_char_p(), ctypes.c_int()
        shape, dims = ctypes.POINTER(ctypes.c_int64)(), ctypes.c_uint64()
        base, size = ctypes.c_void_p(), ctypes.c_size_t()
        memory_type, memory_type_id, userp = ctypes.c_int(), ctypes.c_int64(), ctypes.c_void_p()
        for index in range(count.value):
            self._check(
                api.InferenceResponseOutput(
                    response,
                    index,
                    ctypes.byref(name),
                    ctypes.byref(datatype),
                    ctypes.byref(shape),
                    ctypes.byref(dims),
                    ctypes.byref(base),
                    ctypes.byref(size),
                    ctypes.byref(memory_type),
                    ctypes.byref(memory_type_id),
                    ctypes.byref(userp),
                )
            )
            tensor = OutputTensor(
                name=(name.value or b"").decode(),
                datatype=capi.DATATYPE_NAMES[datatype.value],
                shape=tuple(shape[i] for i in range(dims.value)),
                # A non-NULL buffer userp marks an output written into its shared-memory region: the client
                # reads it there, the response carries its metadata and empty contents (Triton's answer).
                data=b"" if userp.value else self._output_data(base.value, size.value),
            )
            if classes is not None and tensor.name in classes.counts:
                try:
                    tensor = self._classify(response, index, tensor, classes)
                except DyntritonError as exc:
                    result.outputs.clear()
                    result.error = exc
                    return
            result.outputs.append(tensor)

    def _classify(self, response: int, index: int, tensor: OutputTensor, classes: ClassificationSpec) -> OutputTensor:
        """``tensor`` answered as the classification asked (labels read from the live ``response``)."""
        label = ctypes.c_char_p()

        def label_of(class_index: int) -> bytes | None:
            self._check(
                self.api.InferenceResponseOutputClassificationLabel(response, index, class_index, ctypes.byref(label)),
                f"reading the label of class {class_index} of output '{tensor.name}'",
            )
            return label.value

        shape, data = classification.classify(
            tensor.name,
            tensor.data,
            tensor.datatype,
            tensor.shape,
            k=classes.counts[tensor.name],
            batched=classes.batched,
            label_of=label_of,
        )
        return OutputTensor(name=tensor.name, datatype="BYTES", shape=shape, data=data)

    # -- inference -------------------------------------------------------------------------------
    def _deliver(
        self, inflight: _Inflight, response: TritonResponse, key: int | None = None, *, direct: bool = False
    ) -> None:
        """Hand ``response`` to the request's coroutine; ``direct`` when already on its loop's thread."""
        done = False
        with inflight.lock:
            if inflight.finished:
                return
            if response.final:
                inflight.finished = True
                if inflight.released and key is not None:
                    self._inflight.pop(key, None)
                    done = True
        if done:
            inflight.done()
        if direct:
            inflight.queue.put_nowait(response)
        else:
            inflight.loop.call_soon_threadsafe(inflight.queue.put_nowait, response)

    def _traces(self) -> TritonTraces:
        if self._triton_traces is None:
            self._triton_traces = TritonTraces(self.api)
        return self._triton_traces

    def _cancel(self, inflight: _Inflight) -> None:
        with inflight.lock:
            if inflight.request is not None and not inflight.released:
                err = self.api.InferenceRequestCancel(inflight.request)
                if err:
                    self.api.ErrorDelete(err)

    async def infer(
        self,
        model: str,
        inputs: Sequence[InputTensor],
        *,
        version: int = -1,
        outputs: Sequence[str] = (),
        request_id: str = "",
        priority: int = 0,
        timeout_us: int = 0,
        parameters: dict[str, Any] | None = None,
        correlation_id: int | str | None = None,
        flags: int = 0,
        classification: ClassificationSpec | None = None,
        output_regions: Sequence[OutputRegion] = (),
        hold: object = None,
    ) -> AsyncIterator[TritonResponse]:
        """Run one request; yield every response until the final one.

        ``output_regions``: outputs Triton writes straight into shared memory (their responses carry
        empty data for them); ``hold`` is kept alive until Triton released the request and its last
        response (the regions' mappings).

        Closing the iterator early cancels the request in Triton. Errors Triton
        reports for the request are raised as TritonError; an output that cannot
        be classified as ``classification`` asks raises InvalidRequestError.
        """
        if self._stopping:
            raise BackendError("Triton is stopping", status="UNAVAILABLE")
        api, server = self.api, self._require_server()
        key = next(self._ids)
        keepalive: list[Any] = []
        loop = asyncio.get_running_loop()
        if self._completions is not None:
            self._completions.attach(loop, self._on_event)
        inflight = _Inflight(loop, keepalive, classification)
        regions_userp, regions_table = _regions_userp(output_regions)
        inflight.hold = _Held(hold, regions_table)
        request = ctypes.c_void_p()
        self._check(api.InferenceRequestNew(ctypes.byref(request), server, model.encode(), version))
        submitted = False
        try:
            self._build(request.value, inputs, outputs, request_id, priority, timeout_us, parameters, keepalive)
            if correlation_id is not None:
                if isinstance(correlation_id, str):
                    self._check(api.InferenceRequestSetCorrelationIdString(request, correlation_id.encode()))
                else:
                    self._check(api.InferenceRequestSetCorrelationId(request, correlation_id))
            if flags:
                self._check(api.InferenceRequestSetFlags(request, flags))
            callbacks = self._callbacks
            assert callbacks is not None  # set by start_blocking
            self._check(api.InferenceRequestSetReleaseCallback(request, callbacks.request_released, key))
            self._check(
                api.InferenceRequestSetResponseCallback(
                    request, self._allocator, regions_userp, callbacks.response_done, key
                )
            )
            inflight.request = request.value
            self._inflight[key] = inflight
            traced = CURRENT.get()  # a request a frontend traced: Triton's timestamps become spans
            if traced is None:
                self._check(api.ServerInferAsync(server, request, None))
            else:
                self._check(self._traces().infer(server, request, model, traced))
            submitted = True
        finally:
            if not submitted:
                self._inflight.pop(key, None)
                api.InferenceRequestDelete(request)
                inflight.done()
        try:
            while True:
                response = await inflight.queue.get()
                if response.error is not None:
                    raise response.error
                if response.outputs or not response.final:
                    yield response
                elif response.final and not response.outputs:
                    # A decoupled model's closing flag carries no response; report it as final-only.
                    yield response
                if response.final:
                    return
        finally:
            if not inflight.finished:
                self._cancel(inflight)

    def _build(
        self,
        request: int,
        inputs: Sequence[InputTensor],
        outputs: Sequence[str],
        request_id: str,
        priority: int,
        timeout_us: int,
        parameters: dict[str, Any] | None,
        keepalive: list[Any],
    ) -> None:
        api = self.api
        if request_id:
            self._check(api.InferenceRequestSetId(request, request_id.encode()))
        if priority:
            self._check(api.InferenceRequestSetPriorityUInt64(request, priority))
        if timeout_us:
            self._check(api.InferenceRequestSetTimeoutMicroseconds(request, timeout_us))
        for key, value in (parameters or {}).items():
            if isinstance(value, bool):
                self._check(api.InferenceRequestSetBoolParameter(request, key.encode(), value))
            elif isinstance(value, int):
                self._check(api.InferenceRequestSetIntParameter(request, key.encode(), value))
            elif isinstance(value, float):
                self._check(api.InferenceRequestSetDoubleParameter(request, key.encode(), value))
            else:
                self._check(api.InferenceRequestSetStringParameter(request, key.encode(), str(value).encode()))
        for tensor in inputs:
            datatype = capi.DATATYPE_OF_NAME.get(tensor.datatype)
            if datatype is None:
                raise TritonError("INVALID_ARG", f"input '{tensor.name}' has unknown datatype '{tensor.datatype}'")
            name = tensor.name.encode()
            shape = (ctypes.c_int64 * len(tensor.shape))(*tensor.shape)
            self._check(api.InferenceRequestAddInput(request, name, datatype, shape, len(tensor.shape)))
            address, holder = _address_of(tensor.data)  # points into the caller's buffer: no copy
            keepalive.append((tensor.data, holder))
            self._check(
                api.InferenceRequestAppendInputData(request, name, address, len(tensor.data), capi.MEMORY_CPU, 0)
            )
        for output in outputs:
            self._check(api.InferenceRequestAddRequestedOutput(request, output.encode()))
