"""The worker's unary fast path: a serialized request in, a serialized response out, built in C.

For a plain request (no parameters, raw inputs, Triton datatypes: see ``dt_parse`` in
``_completions.c``) the C library parses the request's wire bytes, makes the Triton calls and, on
Triton's thread, serializes the response header and adopts the output buffers. Python per request:
one call to parse, one to submit, one future, and two queued events (response, release). Every
other request takes the general path (``TritonServer.infer``), which gives the same answers; the
tests run the same requests through both and compare the bytes.

Lifetime: the request's bytes are kept until Triton released the request (its release event);
outputs are views of the buffers Triton wrote, freed when the last view goes (``Completions.view``).
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from typing import Any

from dynamo_triton.errors import TritonError
from dynamo_triton.wire import field_header

__all__ = ["EVENT_FAST_RELEASED", "EVENT_FAST_RESPONSE", "FastPath", "Parsed"]

EVENT_FAST_RESPONSE = 3
EVENT_FAST_RELEASED = 4
_MAX_TENSORS = 16
_MAX_DIMS = 32
_FINAL = 1  # TRITONSERVER_RESPONSE_COMPLETE_FINAL
_RAW_OUTPUT_CONTENTS = 6
#: Requests up to this size are copied in C (Triton reads the copy; no release event to wait for).
COPY_LIMIT = 65536


class _Span(ctypes.Structure):
    _fields_ = (("offset", ctypes.c_uint32), ("length", ctypes.c_uint32))


class _Input(ctypes.Structure):
    _fields_ = (
        ("name", _Span),
        ("datatype", _Span),
        ("shape", _Span),
        ("raw", _Span),
        ("type", ctypes.c_int32),
        ("dims", ctypes.c_uint32),
        ("shape_values", ctypes.c_int64 * _MAX_DIMS),
    )


class Parsed(ctypes.Structure):
    """``dt_parsed``: where a plain request's fields are in its bytes."""

    _fields_ = (
        ("model_name", _Span),
        ("model_version", _Span),
        ("id", _Span),
        ("input_count", ctypes.c_uint32),
        ("output_count", ctypes.c_uint32),
        ("raw_count", ctypes.c_uint32),
        ("version", ctypes.c_int64),
        ("inputs", _Input * _MAX_TENSORS),
        ("outputs", _Span * _MAX_TENSORS),
    )


class _Result(ctypes.Structure):
    """``dt_result``: one response as the C response callback read it."""

    _fields_ = (
        ("error_code", ctypes.c_int32),
        ("output_count", ctypes.c_uint32),
        ("error_message", ctypes.c_char_p),
        ("header", ctypes.c_void_p),
        ("header_size", ctypes.c_uint64),
        ("data", ctypes.c_void_p * _MAX_TENSORS),
        ("size", ctypes.c_uint64 * _MAX_TENSORS),
    )


class _Call:
    """One request on the fast path: its future, the C call and the bytes Triton reads."""

    __slots__ = ("call", "finished", "future", "keep", "released", "responses")

    def __init__(self, future: asyncio.Future[list[list[Any]]], keep: object):
        self.future, self.keep = future, keep
        self.call: int | None = None
        self.released = False
        self.finished = False
        self.responses: list[list[Any]] = []


def _address(payload: bytes | bytearray | memoryview) -> tuple[Any, int]:
    """Something ctypes passes as the payload's address (no copy), and its length."""
    if isinstance(payload, bytes):
        return payload, len(payload)
    view = memoryview(payload).cast("B")
    if view.readonly:
        return bytes(view), len(view)  # not what the tcp transport hands over; correct, with a copy
    return (ctypes.c_char * len(view)).from_buffer(view), len(view)


class FastPath:
    """The C fast path of one Triton server.

    :param lib: the completions library (``dt_bind`` already called).
    :param error_of: turns a Triton error code and message into the TritonError the general path raises.
    :param take_error: the same for a ``TRITONSERVER_Error`` pointer, which it frees.
    :param view: a memoryview owning an output buffer Python already holds a reference to (``Completions.own``).
    """

    def __init__(
        self,
        lib: ctypes.CDLL,
        server: int,
        allocator: int,
        error_of: Callable[[int, str], TritonError],
        take_error: Callable[[int], TritonError],
        view: Callable[[int, int], memoryview],
    ):
        self._lib, self._server, self._allocator = lib, server, allocator
        self._error_of, self._take_error, self._view = error_of, take_error, view
        lib.dt_parse.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(Parsed))
        lib.dt_parse.restype = ctypes.c_int
        lib.dt_submit.argtypes = (
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
            ctypes.POINTER(Parsed),
            ctypes.c_char_p,
            ctypes.c_uint64,
            ctypes.POINTER(ctypes.c_void_p),
        )
        lib.dt_submit.restype = ctypes.c_void_p
        lib.dt_call_cancel.argtypes = (ctypes.c_void_p,)
        lib.dt_call_free.argtypes = (ctypes.c_void_p,)
        lib.dt_result_free.argtypes = (ctypes.c_void_p,)
        lib.dt_free.argtypes = (ctypes.c_void_p,)
        self._parse, self._submit = lib.dt_parse, lib.dt_submit
        self._cancel, self._call_free, self._result_free = lib.dt_call_cancel, lib.dt_call_free, lib.dt_result_free
        self._parsed = Parsed()
        self._parsed_ref = ctypes.byref(self._parsed)
        self._out = ctypes.c_void_p()
        self._out_ref = ctypes.byref(self._out)
        self._calls: dict[int, _Call] = {}
        self._keys = 0
        self._pending: tuple[Any, int] | None = None

    @property
    def in_flight(self) -> int:
        """Calls whose request Triton has not released yet."""
        return len(self._calls)

    def parse(self, payload: bytes | bytearray | memoryview) -> bytes | None:
        """The model name of ``payload`` when it is a request the fast path serves, else None.

        The parse is kept for the next :meth:`submit` (same thread, no await in between).
        """
        address = _address(payload)
        if not self._parse(address[0], address[1], self._parsed_ref):
            self._pending = None
            return None
        self._pending = address
        return self._slice(self._parsed.model_name)

    def _slice(self, span: _Span) -> bytes:
        assert self._pending is not None
        data = self._pending[0]
        if isinstance(data, bytes):
            return data[span.offset : span.offset + span.length]
        return bytes(memoryview(data).cast("B")[span.offset : span.offset + span.length])

    def request_version(self) -> bytes:
        """The parsed request's ``model_version`` (empty: latest)."""
        return self._slice(self._parsed.model_version)

    def submit(self, version: bytes) -> tuple[int, asyncio.Future[list[list[Any]]]]:
        """Submit the request :meth:`parse` accepted; ``version`` is the model_version its response names.

        :returns: the call's key (for :meth:`cancel`) and a future of its responses (one for a model that
            is not decoupled), each as its parts: the whole response in bytes, or its header then per
            output a field header and a view (outputs above 64 KiB in all).
        :raises TritonError: Triton refused the request (nothing was submitted).
        """
        pending, self._pending = self._pending, None
        assert pending is not None, "submit() without an accepted parse()"
        self._keys += 1
        key = self._keys
        data, size = pending
        error = self._submit(
            self._server, self._allocator, data, size, COPY_LIMIT, self._parsed_ref, version, key, self._out_ref
        )
        if error:
            raise self._take_error(error)
        future: asyncio.Future[list[list[Any]]] = asyncio.get_running_loop().create_future()
        # A small request's bytes were copied in C (no release event comes); a large one's are kept here.
        call = _Call(future, data if size > COPY_LIMIT else None)
        call.call = self._out.value
        self._calls[key] = call
        return key, future

    def cancel(self, key: int) -> None:
        """Ask Triton to cancel call ``key`` (its final response still comes, and ends it)."""
        call = self._calls.get(key)
        if call is not None and call.call is not None and not call.released:
            self._cancel(call.call)

    def on_event(self, kind: int, address: int, flags: int, key: int) -> None:
        """A fast-path completion (on the loop's thread)."""
        call = self._calls.get(key)
        if kind == EVENT_FAST_RELEASED:
            if call is not None:
                call.keep = None  # Triton no longer reads the request's bytes
                call.released = True
                if call.finished:
                    self._end(call, key)
            return
        try:
            self._answer(call, address, flags)
        finally:
            if address:
                self._result_free(address)
        if call is not None and flags & _FINAL:
            call.finished = True
            if call.released or call.keep is None:  # a copied request has no release event
                self._end(call, key)

    def _end(self, call: _Call, key: int) -> None:
        """Triton is done with the call: give back Python's reference to it."""
        del self._calls[key]
        if call.call is not None:
            self._call_free(call.call)
            call.call = None

    def _answer(self, call: _Call | None, address: int, flags: int) -> None:
        if not address:
            error: TritonError | None = TritonError("INTERNAL", "reading Triton's response failed: out of memory")
            parts: list[Any] = []
        else:
            result = _Result.from_address(address)
            error, parts = None, []
            if result.error_code >= 0:
                error = self._error_of(result.error_code, (result.error_message or b"").decode(errors="replace"))
            count = result.output_count
            views = [self._view(result.data[i], result.size[i]) if result.data[i] else b"" for i in range(count)]
            if error is None:
                parts.append(ctypes.string_at(result.header, result.header_size))
                for view in views:
                    parts += (field_header(_RAW_OUTPUT_CONTENTS, len(view)), view)
        if call is None or call.future.done():
            return
        if error is not None:
            call.future.set_exception(error)
            return
        call.responses.append(parts)
        if flags & _FINAL:
            call.future.set_result(call.responses)

    def cancel_all(self) -> None:
        """Cancel every call Triton still holds (server stop)."""
        for call in list(self._calls.values()):
            if call.call is not None:
                self._cancel(call.call)

    def fail_all(self, error: TritonError) -> None:
        """Answer every call still waiting with ``error`` (Triton stopped)."""
        for call in list(self._calls.values()):
            if not call.future.done():
                call.future.set_exception(error)
