"""One bidirectional inference stream (KServe ``ModelStreamInfer``) run the way Triton runs it.

Semantics (Triton's stream handler, which clients such as the sequence examples rely on):

- Requests of one stream run concurrently, up to ``window`` at a time.
- Responses of **non-decoupled** models go back in request order, whatever order
  the workers finish in; a request rejected before it runs (bad bytes, unknown
  model, failed validation) takes its place in that order like any other answer.
- Responses of **decoupled** models go back as they are produced (each carries
  its request id), never held behind other requests.
- Every request gets exactly one terminal outcome: its response(s), or one error.

Memory is bounded: a request holds one unit of the ``window`` from the moment it
is read until its last answer has been handed to the transport, and its bytes
plus its produced-but-unsent answers count against ``max_pending_bytes``. When
either budget is spent the stream stops reading requests (and a decoupled request
stops pulling from its worker), so a client that stops reading its responses is
pushed back on by flow control instead of growing the frontend's memory.

The window is wide (1024) on purpose: Triton reads a stream without limit, and
a client may rely on it. With sequence models, requests answered in order can
wait behind a START that Triton queues until an earlier sequence ENDs; if the
stream stopped reading before that END arrived, nothing would ever move.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from dynamo_triton.errors import DyntritonError
from dynamo_triton.limits import DEFAULT_STREAM_MAX_PENDING_BYTES, DEFAULT_STREAM_WINDOW
from dynamo_triton.runtime.pipeline import PreparedRequest, RequestPipeline

__all__ = ["DEFAULT_MAX_PENDING_BYTES", "DEFAULT_WINDOW", "StreamFormat", "run_stream"]

log = logging.getLogger(__name__)

#: Requests of one stream in flight or waiting to be written (see dynamo_triton.limits).
DEFAULT_WINDOW = DEFAULT_STREAM_WINDOW
#: Bytes of requests in flight and produced answers one stream may hold before it stops reading and pulling.
DEFAULT_MAX_PENDING_BYTES = DEFAULT_STREAM_MAX_PENDING_BYTES


class StreamFormat:
    """How a protocol frames stream answers (the gRPC frontend supplies its own)."""

    def response(self, prepared: PreparedRequest, chunk: bytes) -> bytes:
        """Frame one serialized ModelInferResponse of ``prepared``."""
        raise NotImplementedError

    def final(self, prepared: PreparedRequest) -> bytes | None:
        """An extra closing answer for a decoupled request, or None (e.g. Triton's empty final response)."""
        return None

    def error(self, model: str, request_id: str, error: DyntritonError) -> bytes:
        """Frame an error answer for one request."""
        raise NotImplementedError


class _Slot:
    """The answers of one request, and whether it has ended."""

    __slots__ = ("done", "items", "request_bytes")

    def __init__(self, request_bytes: int) -> None:
        self.items: collections.deque[bytes] = collections.deque()
        self.done = False
        self.request_bytes = request_bytes


class _Stream:
    def __init__(self, pipeline: RequestPipeline, fmt: StreamFormat, window: int, max_pending_bytes: int):
        self.pipeline, self.fmt = pipeline, fmt
        self.window, self.max_pending_bytes = window, max_pending_bytes
        self.ordered: collections.deque[_Slot] = collections.deque()  # non-decoupled answers, request order
        # (answer, None or, for a request's last answer, the request's bytes to release)
        self.ready: collections.deque[tuple[bytes, int | None]] = collections.deque()
        self.open_requests = 0  # read and not fully written
        self.pending_bytes = 0
        self.reading_done = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()  # new answers ready, or the reader finished
        self.room = asyncio.Event()  # budget freed
        self.room.set()

    # -- budget ----------------------------------------------------------------------------------
    def _has_room(self) -> bool:
        return self.open_requests < self.window and self.pending_bytes < self.max_pending_bytes

    async def _wait_room(self, *, for_reading: bool) -> None:
        while not (self._has_room() if for_reading else self.pending_bytes < self.max_pending_bytes):
            self.room.clear()
            await self.room.wait()

    def _wrote(self, size: int, ends: int | None) -> None:
        self.pending_bytes -= size
        if ends is not None:
            self.open_requests -= 1
            self.pending_bytes -= ends
        self.room.set()

    # -- producing answers -----------------------------------------------------------------------
    def _push(self, item: bytes, ends: int | None) -> None:
        self.pending_bytes += len(item)
        self.ready.append((item, ends))
        self.changed.set()

    def _hold(self, slot: _Slot, item: bytes) -> None:
        slot.items.append(item)
        self.pending_bytes += len(item)

    def _replace_with(self, slot: _Slot, item: bytes) -> None:
        self.pending_bytes -= sum(len(held) for held in slot.items)
        slot.items.clear()
        self._hold(slot, item)

    def _release_ordered(self) -> None:
        """Move the finished requests at the head of the order to the ready queue."""
        released = False
        while self.ordered and self.ordered[0].done:
            slot = self.ordered.popleft()
            while slot.items:
                item = slot.items.popleft()
                self.ready.append((item, None if slot.items else slot.request_bytes))  # counted already
            released = True
        if released:
            self.changed.set()

    def _finish_without_answer(self, request_bytes: int) -> None:
        self.open_requests -= 1
        self.pending_bytes -= request_bytes
        self.room.set()
        self.changed.set()

    async def _run_ordered(self, prepared: PreparedRequest, slot: _Slot) -> None:
        try:
            async for chunk in self.pipeline.stream(prepared, timeout=None):
                self._hold(slot, self.fmt.response(prepared, chunk))
        except DyntritonError as exc:
            self._replace_with(slot, self.fmt.error(prepared.model, prepared.request_id, exc))
        except Exception as exc:  # a bug must still answer the request, in its place
            log.exception("stream request %r for model %r failed", prepared.request_id, prepared.model)
            self._replace_with(slot, self.fmt.error(prepared.model, prepared.request_id, _internal(exc)))
        if not slot.items:  # cannot happen for a non-decoupled model; never leave a request unanswered
            error = DyntritonError(f"model '{prepared.model}' sent no response")
            self._hold(slot, self.fmt.error(prepared.model, prepared.request_id, error))
        slot.done = True
        self._release_ordered()

    async def _run_decoupled(self, prepared: PreparedRequest, request_bytes: int) -> None:
        """Answers go out as produced; the producer waits while the byte budget is spent."""
        try:
            async for chunk in self.pipeline.stream(prepared, timeout=None):
                self._push(self.fmt.response(prepared, chunk), None)
                await self._wait_room(for_reading=False)
            final = self.fmt.final(prepared)
        except DyntritonError as exc:
            final = self.fmt.error(prepared.model, prepared.request_id, exc)
        except Exception as exc:
            log.exception("stream request %r for model %r failed", prepared.request_id, prepared.model)
            final = self.fmt.error(prepared.model, prepared.request_id, _internal(exc))
        if final is None:
            self._finish_without_answer(request_bytes)
        else:
            self._push(final, request_bytes)

    def _answer_now(self, model: str, request_id: str, error: DyntritonError, request_bytes: int) -> None:
        """A request rejected before running: its error takes its place in the order."""
        slot = _Slot(request_bytes)
        self._hold(slot, self.fmt.error(model, request_id, error))
        slot.done = True
        self.ordered.append(slot)
        self._release_ordered()

    def _start(self, raw: bytes) -> None:
        self.open_requests += 1
        size = len(raw)
        self.pending_bytes += size  # held until the request's last answer is written
        request: Any = None
        try:
            request, raw_inputs = self.pipeline.parse(raw)
            prepared = self.pipeline.prepare(request, raw, raw_inputs=raw_inputs)
        except DyntritonError as exc:
            model = request.model_name if request is not None else ""
            self._answer_now(model, request.id if request is not None else "", exc, size)
            return
        if prepared.served.decoupled:
            task = asyncio.create_task(self._run_decoupled(prepared, size))
        else:
            slot = _Slot(size)
            self.ordered.append(slot)
            task = asyncio.create_task(self._run_ordered(prepared, slot))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def read(self, requests: AsyncIterator[bytes]) -> None:
        try:
            await self._wait_room(for_reading=True)
            async for raw in requests:
                self._start(raw)
                await self._wait_room(for_reading=True)
        finally:
            self.reading_done = True
            self.changed.set()

    # -- writing ---------------------------------------------------------------------------------
    async def answers(self) -> AsyncIterator[bytes]:
        while True:
            if self.ready:
                item, ends = self.ready.popleft()
                yield item
                self._wrote(len(item), ends)
                continue
            if self.reading_done and self.open_requests == 0:
                return
            self.changed.clear()
            await self.changed.wait()

    async def cancel(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _internal(exc: Exception) -> DyntritonError:
    return DyntritonError(f"internal error in the frontend: {exc!r}", hint="this is a bug: please report it")


async def run_stream(
    pipeline: RequestPipeline,
    requests: AsyncIterator[bytes],
    fmt: StreamFormat,
    *,
    window: int = DEFAULT_WINDOW,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    on_reader_error: Callable[[BaseException], None] | None = None,
) -> AsyncIterator[bytes]:
    """Serve one stream: read ``requests`` (serialized ModelInferRequests), yield framed answers.

    Ends when the client has finished sending and every request is answered. Closing the
    returned iterator (the client went away) cancels the requests still running.
    """
    if window < 1 or max_pending_bytes < 1:
        raise ValueError("a stream needs a window of at least 1 request and 1 byte")
    stream = _Stream(pipeline, fmt, window, max_pending_bytes)
    reader = asyncio.create_task(stream.read(requests), name="dyntriton-stream-reader")

    def reader_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            stream.reading_done = True
            stream.changed.set()
            if on_reader_error is not None:
                on_reader_error(task.exception())  # type: ignore[arg-type]

    reader.add_done_callback(reader_done)
    try:
        async for item in stream.answers():
            yield item
        if not reader.cancelled() and reader.done() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await stream.cancel()
