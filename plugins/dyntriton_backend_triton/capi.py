"""Raw ctypes declarations of the Triton in-process C API (``tritonserver.h``, API 1.34 / Triton 2.51).

Only declarations live here: enums, callback types and ``argtypes``/``restype``
of each function used. Every pointer is a ``c_void_p`` (the default ``int``
restype would truncate 64-bit pointers). The Pythonic API is in ``server.py``.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_bool, c_char_p, c_double, c_int, c_int64, c_size_t, c_uint, c_uint32, c_uint64, c_void_p

__all__ = [
    "ALLOC_FN",
    "DATATYPE_NAMES",
    "ERROR_CODE_NAMES",
    "RELEASE_FN",
    "REQUEST_RELEASE_FN",
    "RESPONSE_COMPLETE_FN",
    "START_FN",
    "declare",
]

# -- enums -------------------------------------------------------------------------------------------
#: TRITONSERVER_DataType, in enum order (TRITONSERVER_TYPE_INVALID = 0).
DATATYPE_NAMES = (
    "INVALID",
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
)
DATATYPE_OF_NAME = {name: index for index, name in enumerate(DATATYPE_NAMES)}

#: TRITONSERVER_Error_Code, in enum order.
ERROR_CODE_NAMES = (
    "UNKNOWN",
    "INTERNAL",
    "NOT_FOUND",
    "INVALID_ARG",
    "UNAVAILABLE",
    "UNSUPPORTED",
    "ALREADY_EXISTS",
    "CANCELLED",
)
ERROR_CODE_OF_NAME = {name: index for index, name in enumerate(ERROR_CODE_NAMES)}

MEMORY_CPU = 0
MEMORY_CPU_PINNED = 1
MEMORY_GPU = 2

MODEL_CONTROL_NONE = 0
MODEL_CONTROL_POLL = 1
MODEL_CONTROL_EXPLICIT = 2

#: TRITONSERVER_ParameterType, in enum order.
PARAMETER_STRING = 0
PARAMETER_BYTES = 4

REQUEST_RELEASE_ALL = 1
#: TRITONSERVER_RequestFlag: the request starts / ends a sequence (bit flags).
REQUEST_FLAG_SEQUENCE_START = 1
REQUEST_FLAG_SEQUENCE_END = 2
RESPONSE_COMPLETE_FINAL = 1
INDEX_FLAG_READY = 1
TXN_DECOUPLED = 2

#: TRITONSERVER_MetricFormat: the only format, Prometheus text exposition.
METRIC_PROMETHEUS = 0

# -- callback types ----------------------------------------------------------------------------------
ALLOC_FN = ctypes.CFUNCTYPE(
    c_void_p,  # TRITONSERVER_Error*
    c_void_p,  # allocator
    c_char_p,  # tensor_name
    c_size_t,  # byte_size
    c_int,  # memory_type
    c_int64,  # memory_type_id
    c_void_p,  # userp
    POINTER(c_void_p),  # buffer
    POINTER(c_void_p),  # buffer_userp
    POINTER(c_int),  # actual_memory_type
    POINTER(c_int64),  # actual_memory_type_id
)
RELEASE_FN = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_int, c_int64)
START_FN = ctypes.CFUNCTYPE(c_void_p, c_void_p, c_void_p)
REQUEST_RELEASE_FN = ctypes.CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)
RESPONSE_COMPLETE_FN = ctypes.CFUNCTYPE(None, c_void_p, c_uint32, c_void_p)

_ERR = c_void_p  # every function below returns TRITONSERVER_Error* unless noted
_PP = POINTER(c_void_p)

_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ApiVersion": (_ERR, [POINTER(c_uint32), POINTER(c_uint32)]),
    "ErrorNew": (_ERR, [c_int, c_char_p]),
    "ErrorDelete": (None, [c_void_p]),
    "ErrorCode": (c_int, [c_void_p]),
    "ErrorCodeString": (c_char_p, [c_void_p]),
    "ErrorMessage": (c_char_p, [c_void_p]),
    "MessageSerializeToJson": (_ERR, [c_void_p, POINTER(c_void_p), POINTER(c_size_t)]),
    "MessageDelete": (_ERR, [c_void_p]),
    "ResponseAllocatorNew": (_ERR, [_PP, ALLOC_FN, RELEASE_FN, START_FN]),
    "ResponseAllocatorDelete": (_ERR, [c_void_p]),
    "InferenceRequestNew": (_ERR, [_PP, c_void_p, c_char_p, c_int64]),
    "InferenceRequestDelete": (_ERR, [c_void_p]),
    "InferenceRequestSetId": (_ERR, [c_void_p, c_char_p]),
    "InferenceRequestSetPriorityUInt64": (_ERR, [c_void_p, c_uint64]),
    "InferenceRequestSetTimeoutMicroseconds": (_ERR, [c_void_p, c_uint64]),
    "InferenceRequestSetCorrelationId": (_ERR, [c_void_p, c_uint64]),
    "InferenceRequestSetCorrelationIdString": (_ERR, [c_void_p, c_char_p]),
    "InferenceRequestSetFlags": (_ERR, [c_void_p, c_uint32]),
    "InferenceRequestAddInput": (_ERR, [c_void_p, c_char_p, c_int, POINTER(c_int64), c_uint64]),
    "InferenceRequestAppendInputData": (_ERR, [c_void_p, c_char_p, c_void_p, c_size_t, c_int, c_int64]),
    "InferenceRequestAddRequestedOutput": (_ERR, [c_void_p, c_char_p]),
    "InferenceRequestSetReleaseCallback": (_ERR, [c_void_p, REQUEST_RELEASE_FN, c_void_p]),
    "InferenceRequestSetResponseCallback": (_ERR, [c_void_p, c_void_p, c_void_p, RESPONSE_COMPLETE_FN, c_void_p]),
    "InferenceRequestCancel": (_ERR, [c_void_p]),
    "InferenceRequestSetStringParameter": (_ERR, [c_void_p, c_char_p, c_char_p]),
    "InferenceRequestSetIntParameter": (_ERR, [c_void_p, c_char_p, c_int64]),
    "InferenceRequestSetBoolParameter": (_ERR, [c_void_p, c_char_p, c_bool]),
    "InferenceRequestSetDoubleParameter": (_ERR, [c_void_p, c_char_p, c_double]),
    "InferenceResponseDelete": (_ERR, [c_void_p]),
    "InferenceResponseError": (_ERR, [c_void_p]),
    "InferenceResponseId": (_ERR, [c_void_p, POINTER(c_char_p)]),
    "InferenceResponseOutputCount": (_ERR, [c_void_p, POINTER(c_uint32)]),
    "InferenceResponseOutput": (
        _ERR,
        [
            c_void_p,
            c_uint32,
            POINTER(c_char_p),
            POINTER(c_int),
            POINTER(POINTER(c_int64)),
            POINTER(c_uint64),
            POINTER(c_void_p),
            POINTER(c_size_t),
            POINTER(c_int),
            POINTER(c_int64),
            POINTER(c_void_p),
        ],
    ),
    "InferenceResponseOutputClassificationLabel": (_ERR, [c_void_p, c_uint32, c_size_t, POINTER(c_char_p)]),
    "ServerOptionsNew": (_ERR, [_PP]),
    "ServerOptionsDelete": (_ERR, [c_void_p]),
    "ServerOptionsSetModelRepositoryPath": (_ERR, [c_void_p, c_char_p]),
    "ServerOptionsSetModelControlMode": (_ERR, [c_void_p, c_int]),
    "ServerOptionsSetStrictModelConfig": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetLogVerbose": (_ERR, [c_void_p, c_int]),
    "ServerOptionsSetLogInfo": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetLogWarn": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetLogError": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetLogFormat": (_ERR, [c_void_p, c_int]),
    "ServerOptionsSetExitTimeout": (_ERR, [c_void_p, c_uint]),
    "ServerOptionsSetMetrics": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetGpuMetrics": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetCpuMetrics": (_ERR, [c_void_p, c_bool]),
    "ServerOptionsSetBackendDirectory": (_ERR, [c_void_p, c_char_p]),
    "ServerOptionsSetRepoAgentDirectory": (_ERR, [c_void_p, c_char_p]),
    "ServerOptionsSetBackendConfig": (_ERR, [c_void_p, c_char_p, c_char_p, c_char_p]),
    "ServerOptionsSetServerId": (_ERR, [c_void_p, c_char_p]),
    "ServerOptionsSetPinnedMemoryPoolByteSize": (_ERR, [c_void_p, c_uint64]),
    "ServerOptionsSetMinSupportedComputeCapability": (_ERR, [c_void_p, c_double]),
    "ServerOptionsSetModelLoadRetryCount": (_ERR, [c_void_p, c_uint]),
    "ServerNew": (_ERR, [_PP, c_void_p]),
    "ServerDelete": (_ERR, [c_void_p]),
    "ServerStop": (_ERR, [c_void_p]),
    "ServerSetExitTimeout": (_ERR, [c_void_p, c_uint]),
    "ServerIsLive": (_ERR, [c_void_p, POINTER(c_bool)]),
    "ServerIsReady": (_ERR, [c_void_p, POINTER(c_bool)]),
    "ServerModelIsReady": (_ERR, [c_void_p, c_char_p, c_int64, POINTER(c_bool)]),
    "ServerModelIndex": (_ERR, [c_void_p, c_uint32, _PP]),
    "ServerModelConfig": (_ERR, [c_void_p, c_char_p, c_int64, c_uint32, _PP]),
    "ServerModelMetadata": (_ERR, [c_void_p, c_char_p, c_int64, _PP]),
    "ServerModelStatistics": (_ERR, [c_void_p, c_char_p, c_int64, _PP]),
    "ServerModelTransactionProperties": (_ERR, [c_void_p, c_char_p, c_int64, POINTER(c_uint32), _PP]),
    "ServerLoadModel": (_ERR, [c_void_p, c_char_p]),
    "ServerUnloadModel": (_ERR, [c_void_p, c_char_p]),
    # Load parameters (RepositoryModelLoad's "config" and "file:<path>"): ParameterNew copies a string
    # value, ParameterBytesNew only points at the bytes (keep them alive until ParameterDelete).
    "ParameterNew": (c_void_p, [c_char_p, c_int, c_void_p]),
    "ParameterBytesNew": (c_void_p, [c_char_p, c_void_p, c_uint64]),
    "ParameterDelete": (None, [c_void_p]),
    "ServerLoadModelWithParameters": (_ERR, [c_void_p, c_char_p, _PP, c_uint64]),
    "ServerInferAsync": (_ERR, [c_void_p, c_void_p, c_void_p]),
    "ServerMetadata": (_ERR, [c_void_p, _PP]),
    "ServerMetrics": (_ERR, [c_void_p, _PP]),
    "MetricsFormatted": (_ERR, [c_void_p, c_int, _PP, POINTER(c_size_t)]),
    "MetricsDelete": (_ERR, [c_void_p]),
}


#: Per-request calls that may wait on Triton's internal locks (the scheduler's queue): they keep
#: the GIL only when Triton's callbacks are the C ones (TritonLib.hold_gil), ~75 us less per request.
REQUEST_PATH = frozenset({"InferenceRequestNew", "ServerInferAsync", "InferenceRequestCancel"})

#: Calls that only touch one request, response or error object (no lock another thread could hold
#: while it waits for the GIL) are made without releasing the GIL. Releasing it around each of
#: them let the loop thread and Triton's callback threads take the GIL from each other a dozen
#: times per request (measured: 25 us for a setter that does nothing but store a pointer). Calls
#: that may wait on Triton's threads (infer, cancel, load, stop...) keep releasing it.
KEEP_GIL = frozenset(
    {
        "ErrorNew",
        "ErrorDelete",
        "ErrorCode",
        "ErrorCodeString",
        "ErrorMessage",
        "InferenceRequestDelete",
        "InferenceRequestSetId",
        "InferenceRequestSetPriorityUInt64",
        "InferenceRequestSetTimeoutMicroseconds",
        "InferenceRequestSetCorrelationId",
        "InferenceRequestSetCorrelationIdString",
        "InferenceRequestSetFlags",
        "InferenceRequestAddInput",
        "InferenceRequestAppendInputData",
        "InferenceRequestAddRequestedOutput",
        "InferenceRequestSetReleaseCallback",
        "InferenceRequestSetResponseCallback",
        "InferenceRequestSetStringParameter",
        "InferenceRequestSetIntParameter",
        "InferenceRequestSetBoolParameter",
        "InferenceRequestSetDoubleParameter",
        "InferenceResponseDelete",
        "InferenceResponseError",
        "InferenceResponseId",
        "InferenceResponseOutputCount",
        "InferenceResponseOutput",
        "InferenceResponseOutputClassificationLabel",
    }
)


class TritonLib:
    """The loaded library with every declared function as an attribute, without the ``TRITONSERVER_`` prefix."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self._holding = ctypes.PyDLL(lib._name, handle=lib._handle)  # same library, calls keep the GIL
        for name in _SIGNATURES:
            self._declare(name, self._holding if name in KEEP_GIL else lib)

    def _declare(self, name: str, library: ctypes.CDLL) -> None:
        restype, argtypes = _SIGNATURES[name]
        function = getattr(library, f"TRITONSERVER_{name}")
        function.restype = restype
        function.argtypes = argtypes
        setattr(self, name, function)

    def hold_gil(self, names: frozenset[str]) -> None:
        """Make the calls ``names`` keep the GIL too.

        Safe only when no Triton thread ever waits for the GIL (Triton's callbacks are C, see
        completions.py): a call that waits on a Triton lock would otherwise deadlock with a
        callback holding that lock while it waits for the GIL.
        """
        for name in names:
            self._declare(name, self._holding)

    def release_gil(self, names: frozenset[str]) -> None:
        """Undo :meth:`hold_gil` for ``names``: from now on a Triton thread may wait for the GIL
        (Python trace callbacks, see tracing.py)."""
        for name in names:
            self._declare(name, self.lib)


def declare(lib: ctypes.CDLL) -> TritonLib:
    """Attach the declarations to a loaded ``libtritonserver``."""
    return TritonLib(lib)
