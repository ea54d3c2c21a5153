"""Triton's own timestamps of a traced request, through the C API's ``TRITONSERVER_InferenceTrace``.

For a request the worker traces (``dynamo_triton.runtime.tracing.CURRENT`` set while it is
submitted), :meth:`TritonTraces.infer` makes a trace object at level ``TIMESTAMPS`` whose activity
callback records Triton's timestamps (``TRITONSERVER_InferenceTraceActivity``: request start,
queue start, compute start, compute input end, compute output start, compute end, request end;
steady-clock nanoseconds) and whose release callback, called once Triton is done with the trace,
turns them into spans under the worker's span and deletes the trace. Both callbacks run on
Triton's threads; the span SDK is thread-safe.

The callbacks are Python (ctypes): a Triton thread reporting an activity waits for the GIL. So
traced requests are submitted with a ``ServerInferAsync`` that releases the GIL, and, from the first
traced request on, the request-path calls that keep the GIL with the C completions
(``capi.REQUEST_PATH``, ``TritonLib.hold_gil``) release it again: a call waiting on a Triton lock
while holding the GIL could otherwise deadlock with a trace callback holding that lock. Untraced
requests of a worker that traces pay that (tens of µs); a worker that never traces does not.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
import time
from ctypes import c_int, c_uint64, c_void_p
from typing import Any

from dynamo_triton.runtime.tracing import WorkerTrace
from dyntriton_backend_triton import capi

__all__ = ["TritonTraces"]

log = logging.getLogger(__name__)

TRACE_LEVEL_TIMESTAMPS = 0x4  # TRITONSERVER_TRACE_LEVEL_TIMESTAMPS
ACTIVITY_FN = ctypes.CFUNCTYPE(None, c_void_p, c_int, c_uint64, c_void_p)
TRACE_RELEASE_FN = ctypes.CFUNCTYPE(None, c_void_p, c_void_p)


class TritonTraces:
    """Creates Triton trace objects for traced requests and hands their timestamps to the spans.

    :param api: the loaded ``libtritonserver``'s declarations.
    """

    def __init__(self, api: capi.TritonLib):
        api.release_gil(capi.REQUEST_PATH)
        lib = api.lib  # a CDLL: its calls release the GIL
        self._new = lib["TRITONSERVER_InferenceTraceNew"]
        self._new.restype = c_void_p
        self._new.argtypes = [ctypes.POINTER(c_void_p), c_int, c_uint64, ACTIVITY_FN, TRACE_RELEASE_FN, c_void_p]
        self._delete = lib["TRITONSERVER_InferenceTraceDelete"]
        self._delete.restype = c_void_p
        self._delete.argtypes = [c_void_p]
        self._infer = lib["TRITONSERVER_ServerInferAsync"]
        self._infer.restype = c_void_p
        self._infer.argtypes = [c_void_p, c_void_p, c_void_p]
        self._error_delete = lib["TRITONSERVER_ErrorDelete"]
        self._error_delete.argtypes = [c_void_p]
        # Kept referenced for the library's lifetime (Triton calls them from its threads).
        self._on_activity = ACTIVITY_FN(self._activity)
        self._on_release = TRACE_RELEASE_FN(self._release)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[WorkerTrace, str, dict[int, int]]] = {}

    def infer(self, server: Any, request: Any, model: str, trace: WorkerTrace) -> int | None:
        """``TRITONSERVER_ServerInferAsync`` with a new trace for ``request``; returns its error pointer."""
        key = next(self._ids)
        handle = c_void_p()
        error = self._new(ctypes.byref(handle), TRACE_LEVEL_TIMESTAMPS, 0, self._on_activity, self._on_release, key)
        if error:  # no trace: run the request untraced rather than fail it
            self._error_delete(error)
            log.warning("Triton refused a trace object; the request of model %r runs without Triton's spans", model)
            return self._infer(server, request, None)
        with self._lock:
            self._pending[key] = (trace, model, {})
        error = self._infer(server, request, handle)
        if error:
            with self._lock:
                self._pending.pop(key, None)
            self._delete(handle)
        return error

    def _activity(self, _trace: int, activity: int, timestamp_ns: int, userp: int) -> None:
        with self._lock:
            entry = self._pending.get(userp)
        if entry is not None:
            entry[2].setdefault(activity, timestamp_ns)  # the first of each (a request's own, not a child's)

    def _release(self, handle: int, userp: int) -> None:
        with self._lock:
            entry = self._pending.pop(userp, None)
        try:
            if entry is not None:
                trace, model, stamps = entry
                trace.triton_timestamps(model, stamps, time.time_ns() - time.monotonic_ns())
        except Exception:  # never into Triton's thread
            log.exception("turning Triton's trace timestamps into spans failed")
        finally:
            error = self._delete(handle)
            if error:
                self._error_delete(error)
