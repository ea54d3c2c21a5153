"""dynamo_triton.request_runner: every transport's server answers each request once, by the same rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.request_runner import run_request
from dynamo_triton.transport import Chunk, TransportRequest


class Recorder:
    """A Replier that records what it was asked to send, per key."""

    lost: tuple[type[BaseException], ...] = (ConnectionError,)

    def __init__(self, *, awaiting: bool = True) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.stopping = False
        self.awaiting = awaiting

    def data(self, key: int, chunk: Chunk) -> Any:
        if chunk == b"lost":
            raise ConnectionError("the peer reset the connection")
        self.sent.append(("data", key, bytes(chunk)))  # type: ignore[arg-type]
        return asyncio.sleep(0) if self.awaiting else None

    async def end(self, key: int) -> None:
        self.sent.append(("end", key))

    async def error(self, key: int, status: str, message: str) -> None:
        self.sent.append(("error", key, status, message))

    async def gone(self, key: int) -> None:
        self.sent.append(("gone", key))

    def finished(self, key: int) -> None:
        self.sent.append(("finished", key))


def handler_of(*chunks: bytes, then: BaseException | None = None, closed: list[str] | None = None) -> Any:
    async def handler(request: TransportRequest) -> AsyncIterator[Chunk]:
        try:
            for chunk in chunks:
                yield chunk
            if then is not None:
                raise then
        finally:
            if closed is not None:
                closed.append(request.endpoint)

    return handler


@pytest.mark.parametrize("awaiting", [True, False])
async def test_chunks_then_end_then_finished(awaiting: bool) -> None:
    replier, closed = Recorder(awaiting=awaiting), []
    await run_request(handler_of(b"a", b"b", closed=closed), TransportRequest("infer", b""), 7, replier)
    assert replier.sent == [("data", 7, b"a"), ("data", 7, b"b"), ("end", 7), ("finished", 7)]
    assert closed == ["infer"]


async def test_a_dyntriton_error_keeps_its_status_and_message() -> None:
    replier = Recorder()
    failing = handler_of(b"a", then=InvalidRequestError("input 'X' is unknown"))
    await run_request(failing, TransportRequest("infer", b""), 1, replier)
    assert replier.sent == [
        ("data", 1, b"a"),
        ("error", 1, "INVALID_ARGUMENT", "input 'X' is unknown"),
        ("finished", 1),
    ]


async def test_a_foreign_exception_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    replier = Recorder()
    await run_request(handler_of(then=KeyError("k")), TransportRequest("infer", b""), 1, replier)
    assert replier.sent == [("error", 1, "INTERNAL", "KeyError: 'k'"), ("finished", 1)]
    assert "handler for endpoint 'infer' failed" in caplog.text


async def test_the_server_side_deadline_is_deadline_exceeded_on_every_transport() -> None:
    replier = Recorder()
    never = asyncio.Event()

    async def slow(request: TransportRequest) -> AsyncIterator[Chunk]:
        yield b"first"
        await never.wait()

    await asyncio.wait_for(run_request(slow, TransportRequest("infer", b"", timeout=0.05), 3, replier), 10)
    assert replier.sent[0] == ("data", 3, b"first")
    assert replier.sent[1] == (
        "error",
        3,
        "DEADLINE_EXCEEDED",
        "deadline of 0.05 s exceeded on the server for endpoint 'infer'",
    )
    assert replier.sent[2:] == [("finished", 3)]


async def test_a_lost_peer_gets_nothing_more() -> None:
    replier, closed = Recorder(), []
    await run_request(handler_of(b"lost", b"b", closed=closed), TransportRequest("infer", b""), 1, replier)
    assert replier.sent == [("finished", 1)] and closed == ["infer"]


@pytest.mark.parametrize(("stopping", "told"), [(True, [("gone", 1)]), (False, [])])
async def test_cancelled_requests_are_told_gone_only_when_the_server_stops(stopping: bool, told: list[Any]) -> None:
    replier, started, closed = Recorder(), asyncio.Event(), []

    async def blocked(request: TransportRequest) -> AsyncIterator[Chunk]:
        try:
            started.set()
            await asyncio.Event().wait()
            yield b"never"
        finally:
            closed.append(request.endpoint)

    task = asyncio.ensure_future(run_request(blocked, TransportRequest("infer", b""), 1, replier))
    await asyncio.wait_for(started.wait(), 10)
    replier.stopping = stopping
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert replier.sent == [*told, ("finished", 1)] and closed == ["infer"]
