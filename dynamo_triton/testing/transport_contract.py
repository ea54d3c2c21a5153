"""The request-plane transport contract, as a test class any transport plugin can run.

Subclass :class:`TransportContract` in a test module and provide a ``transport``
fixture returning the :class:`~dynamo_triton.transport.Transport` to check::

    import pytest
    from dynamo_triton.testing.transport_contract import TransportContract

    class TestMyTransport(TransportContract):
        @pytest.fixture
        def transport(self):
            return MyTransport()

Override :meth:`TransportContract.kill_server` to make a server vanish the way
a crashed process would (the default stops it with no grace). ``wait`` bounds
every wait so a broken transport fails instead of hanging. Needs pytest-asyncio
in auto mode (or mark the tests yourself).

Transports whose clients report liveness (:class:`~dynamo_triton.transport.LivenessReporting`)
also run the liveness tests: override :meth:`TransportContract.freeze_server` and
:meth:`TransportContract.thaw_server` (a server that stops reading and answering without
closing anything, like a SIGSTOPped process) and set ``heartbeat`` to the limit the
``transport`` fixture was built with (keep it short: the tests wait a few multiples of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dynamo_triton.errors import (
    DeadlineExceededError,
    DyntritonError,
    InvalidRequestError,
    ModelNotFoundError,
    PeerGoneError,
    PeerUnresponsiveError,
    TritonError,
    error_from_status,
)
from dynamo_triton.testing.wait import until
from dynamo_triton.transport import (
    Chunk,
    Handler,
    LivenessReporting,
    Transport,
    TransportClient,
    TransportRequest,
    TransportServer,
    call_unary,
)

__all__ = ["TransportContract", "collect", "echo"]


async def echo(request: TransportRequest) -> AsyncIterator[Chunk]:
    """A handler answering the request payload once."""
    yield request.payload


async def collect(stream: AsyncIterator[bytes], wait: float) -> list[bytes]:
    """All responses of ``stream`` as bytes, or fail the test after ``wait`` seconds."""

    async def gather() -> list[bytes]:
        return [bytes(chunk) async for chunk in stream]

    try:
        return await asyncio.wait_for(gather(), wait)
    except TimeoutError:
        pytest.fail(f"the call did not finish within {wait} s")


async def within(awaitable: Awaitable[Any], wait: float, what: str) -> Any:
    """``await awaitable``, or fail the test saying ``what`` did not happen in ``wait`` seconds."""
    try:
        return await asyncio.wait_for(awaitable, wait)
    except TimeoutError:
        pytest.fail(f"{what} did not happen within {wait} s")


class _Probe:
    """A handler that records that it started and whether it was cancelled, then blocks."""

    def __init__(self, first: bytes | None = None):
        self.first = first
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.requests: list[TransportRequest] = []

    async def __call__(self, request: TransportRequest) -> AsyncIterator[bytes]:
        self.requests.append(request)
        self.started.set()
        try:
            if self.first is not None:
                yield self.first
            await asyncio.sleep(3600)
            yield b"never"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class _CallOnly:
    """A client seen through ``call`` and ``close`` only: what :func:`call_unary` falls back on."""

    def __init__(self, client: TransportClient):
        self._client = client

    def call(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        return self._client.call(address, endpoint, payload, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()


class TransportContract:
    """Behaviour every Transport must have (see dynamo_triton/transport.py)."""

    #: upper bound, in seconds, of any wait in these tests.
    wait: float = 10.0
    #: the heartbeat limit (seconds) of the ``transport`` fixture, for the liveness tests.
    heartbeat: float = 1.0

    async def kill_server(self, server: TransportServer) -> None:
        """Make ``server`` vanish abruptly; transports override this to simulate a crash."""
        await server.stop(grace=0)

    async def freeze_server(self, server: TransportServer) -> None:
        """Make ``server`` stop reading and answering, connections left open (a frozen process)."""
        pytest.skip("freeze_server is not implemented for this transport")

    async def thaw_server(self, server: TransportServer) -> None:
        """Undo :meth:`freeze_server`."""
        pytest.skip("thaw_server is not implemented for this transport")

    @pytest.fixture
    async def client(self, transport: Transport) -> AsyncIterator[TransportClient]:
        client = transport.client()
        yield client
        await client.close()

    @pytest.fixture
    async def serve(self, transport: Transport) -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Any, str]]]]:
        """``await serve(handler)`` starts a server and returns ``(server, address)``; all stop at teardown."""
        servers: list[TransportServer] = []

        async def start(handler: Handler) -> tuple[TransportServer, str]:
            server = transport.server("127.0.0.1", 0)
            address = await server.start(handler)
            servers.append(server)
            return server, address

        yield start
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop(grace=0)

    # -- responses ---------------------------------------------------------------------------

    async def test_single_response_carries_payload_endpoint_and_timeout(
        self, serve: Callable, client: TransportClient
    ) -> None:
        seen: list[TransportRequest] = []

        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            seen.append(request)
            yield request.endpoint.encode() + b":" + request.payload

        _, address = await serve(handler)
        payload = bytes(range(256)) * 3
        assert await collect(client.call(address, "infer", payload, timeout=30.0), self.wait) == [b"infer:" + payload]
        assert seen[0].endpoint == "infer" and bytes(seen[0].payload) == payload
        assert seen[0].timeout is not None and 0 < seen[0].timeout <= 30.0
        await collect(client.call(address, "statistics", b""), self.wait)
        assert seen[1].endpoint == "statistics" and seen[1].timeout is None and bytes(seen[1].payload) == b""

    async def test_streamed_responses_arrive_in_order(self, serve: Callable, client: TransportClient) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            for i in range(int(request.payload)):
                yield str(i).encode()
                if i % 10 == 0:
                    await asyncio.sleep(0)
            yield b""

        _, address = await serve(handler)
        expected = [str(i).encode() for i in range(100)] + [b""]
        assert await collect(client.call(address, "stream", b"100"), self.wait) == expected

    async def test_no_response_at_all_is_an_empty_stream(self, serve: Callable, client: TransportClient) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            return
            yield b""

        _, address = await serve(handler)
        assert await collect(client.call(address, "x", b"p"), self.wait) == []

    async def test_many_concurrent_requests_interleave(self, serve: Callable, client: TransportClient) -> None:
        # Every handler sends its first response, then waits until all have started:
        # this finishes only if the requests really are in flight at the same time.
        count = 40
        started = 0
        everyone = asyncio.Event()

        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            nonlocal started
            started += 1
            if started == count:
                everyone.set()
            yield b"first-" + request.payload
            await everyone.wait()
            yield b"second-" + request.payload

        _, address = await serve(handler)
        calls = [collect(client.call(address, "e", str(i).encode()), self.wait) for i in range(count)]
        results = await asyncio.gather(*calls)
        assert results == [[b"first-%d" % i, b"second-%d" % i] for i in range(count)]

    async def test_large_payload_round_trip(self, serve: Callable, client: TransportClient) -> None:
        payload = bytes(range(256)) * (64 * 1024 * 1024 // 256)

        async def handler(request: TransportRequest) -> AsyncIterator[Chunk]:
            assert len(request.payload) == len(payload)
            yield request.payload
            yield b"done"

        _, address = await serve(handler)
        results = await collect(client.call(address, "big", payload), self.wait * 3)
        assert len(results) == 2 and results[1] == b"done"
        assert len(results[0]) == len(payload) and results[0] == payload

    # -- errors ------------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "error",
        [
            InvalidRequestError("inference input 'X' data-type is 'FP32', but model 'm' expects 'INT32'"),
            ModelNotFoundError("unknown model 'nope'"),
            TritonError("UNSUPPORTED", "not supported here"),
            DyntritonError("too big", status="RESOURCE_EXHAUSTED"),
        ],
        ids=lambda e: e.status,
    )
    async def test_handler_error_keeps_status_and_message(
        self, serve: Callable, client: TransportClient, error: DyntritonError
    ) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            yield b"partial"
            raise error

        _, address = await serve(handler)
        received: list[bytes] = []
        with pytest.raises(DyntritonError) as caught:
            async for chunk in client.call(address, "x", b""):
                received.append(bytes(chunk))
        assert received == [b"partial"]
        assert caught.value.status == error.status
        assert caught.value.message == error.message
        assert type(caught.value) is type(error_from_status(error.status, error.message))

    async def test_foreign_exception_arrives_as_internal(self, serve: Callable, client: TransportClient) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            raise ValueError("boom in handler")
            yield b""

        _, address = await serve(handler)
        with pytest.raises(DyntritonError) as caught:
            await collect(client.call(address, "x", b""), self.wait)
        assert caught.value.status == "INTERNAL"
        assert "boom in handler" in caught.value.message

    async def test_bytes_like_responses_and_bad_chunks(self, serve: Callable, client: TransportClient) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes | bytearray | memoryview]:
            yield bytearray(b"array")
            yield memoryview(b"view")
            if request.payload == b"bad":
                yield "a str is not bytes"  # type: ignore[misc]

        _, address = await serve(handler)
        assert await collect(client.call(address, "x", b""), self.wait) == [b"array", b"view"]
        with pytest.raises(DyntritonError) as caught:
            await collect(client.call(address, "x", b"bad"), self.wait)
        assert caught.value.status == "INTERNAL"
        assert await collect(client.call(address, "x", b""), self.wait) == [b"array", b"view"]

    async def test_a_response_in_parts_arrives_as_one_payload(self, serve: Callable, client: TransportClient) -> None:
        big = bytes(range(256)) * 1024  # 256 KiB: large parts are sent as they are, not joined

        async def handler(request: TransportRequest) -> AsyncIterator[Any]:
            yield [b"head", memoryview(big), bytearray(b"tail")]
            yield (b"", b"second")
            if request.payload == b"bad":
                yield [b"ok", "a str is not bytes"]

        _, address = await serve(handler)
        assert await collect(client.call(address, "x", b""), self.wait) == [b"head" + big + b"tail", b"second"]
        with pytest.raises(DyntritonError) as caught:
            await collect(client.call(address, "x", b"bad"), self.wait)
        assert caught.value.status == "INTERNAL"
        assert await collect(client.call(address, "x", b""), self.wait) == [b"head" + big + b"tail", b"second"]

    async def test_server_survives_failed_requests(self, serve: Callable, client: TransportClient) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[Chunk]:
            if request.payload == b"fail":
                raise RuntimeError("bad")
            yield request.payload

        _, address = await serve(handler)
        for _ in range(3):
            with pytest.raises(DyntritonError):
                await collect(client.call(address, "x", b"fail"), self.wait)
            assert await collect(client.call(address, "x", b"ok"), self.wait) == [b"ok"]

    # -- cancellation and deadlines ----------------------------------------------------------

    async def test_closing_the_iterator_cancels_the_handler(self, serve: Callable, client: TransportClient) -> None:
        probe = _Probe(first=b"one")
        _, address = await serve(probe)
        stream = client.call(address, "x", b"")
        iterator = stream.__aiter__()
        assert bytes(await within(iterator.__anext__(), self.wait, "the first response")) == b"one"
        await iterator.aclose()  # type: ignore[attr-defined]
        await within(probe.cancelled.wait(), self.wait, "the handler's cancellation")

    async def test_cancelling_the_consumer_cancels_the_handler(self, serve: Callable, client: TransportClient) -> None:
        probe = _Probe()
        _, address = await serve(probe)
        task = asyncio.create_task(collect(client.call(address, "x", b""), 3600))
        await within(probe.started.wait(), self.wait, "the handler's start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await within(probe.cancelled.wait(), self.wait, "the handler's cancellation")

    async def test_deadline_raises_and_cancels_the_handler(self, serve: Callable, client: TransportClient) -> None:
        probe = _Probe(first=b"one")
        _, address = await serve(probe)
        received: list[bytes] = []
        with pytest.raises(DeadlineExceededError) as caught:
            async with contextlib.aclosing(client.call(address, "x", b"", timeout=0.3)) as stream:  # type: ignore[type-var]
                async for chunk in within_each(stream, self.wait):
                    received.append(bytes(chunk))
        assert received == [b"one"]
        assert caught.value.status == "DEADLINE_EXCEEDED"
        await within(probe.cancelled.wait(), self.wait, "the handler's cancellation after the deadline")
        assert probe.requests[0].timeout is not None and 0 < probe.requests[0].timeout <= 0.3

    async def test_one_cancelled_call_leaves_the_others_alone(self, serve: Callable, client: TransportClient) -> None:
        release = asyncio.Event()
        arrived: list[bytes] = []
        both = asyncio.Event()

        async def handler(request: TransportRequest) -> AsyncIterator[Chunk]:
            arrived.append(bytes(request.payload))
            if len(arrived) == 2:
                both.set()
            await release.wait()
            yield request.payload

        _, address = await serve(handler)
        doomed = asyncio.create_task(collect(client.call(address, "x", b"doomed"), 3600))
        kept = asyncio.create_task(collect(client.call(address, "x", b"kept"), self.wait))
        await within(both.wait(), self.wait, "both calls to reach the handler")
        doomed.cancel()
        release.set()
        assert await kept == [b"kept"]
        assert doomed.cancelled()

    # -- stopping and vanishing peers --------------------------------------------------------

    async def test_stop_fails_requests_in_flight_promptly(self, serve: Callable, client: TransportClient) -> None:
        probe = _Probe()
        server, address = await serve(probe)
        task = asyncio.create_task(collect(client.call(address, "x", b""), 3600))
        await within(probe.started.wait(), self.wait, "the handler's start")
        await within(server.stop(grace=0.1), self.wait, "stop(grace=0.1)")
        with pytest.raises(DyntritonError) as caught:
            await within(task, self.wait, "the client's error after stop")
        assert caught.value.status == "UNAVAILABLE"
        assert probe.cancelled.is_set()

    async def test_stop_lets_requests_finish_within_grace(self, serve: Callable, client: TransportClient) -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            started.set()
            await release.wait()
            yield b"finished"

        server, address = await serve(handler)
        task = asyncio.create_task(collect(client.call(address, "x", b""), self.wait))
        await within(started.wait(), self.wait, "the handler's start")
        stopping = asyncio.create_task(server.stop(grace=self.wait))
        await asyncio.sleep(0)  # let stop begin: it must wait for the handler, which waits for release
        assert not stopping.done(), "stop returned while a request was still running"
        release.set()
        await within(stopping, self.wait, "stop after the request finished")
        assert await task == [b"finished"]

    async def test_peer_gone_fails_every_call_in_flight(self, serve: Callable, client: TransportClient) -> None:
        probe = _Probe(first=b"one")
        server, address = await serve(probe)
        tasks = [asyncio.create_task(collect(client.call(address, "x", b""), 3600)) for _ in range(3)]
        while len(probe.requests) < 3:
            await within(asyncio.sleep(0.01), self.wait, "handler start")
        await self.kill_server(server)
        for task in tasks:
            with pytest.raises(PeerGoneError) as caught:
                await within(task, self.wait, "PeerGoneError after the server vanished")
            assert caught.value.status == "UNAVAILABLE"

    async def test_unknown_address_raises_peer_gone_quickly(
        self, serve: Callable, client: TransportClient, transport: Transport
    ) -> None:
        server, address = await serve(echo)
        await server.stop(grace=0)
        with pytest.raises(PeerGoneError) as caught:
            await collect(client.call(address, "x", b""), self.wait)
        assert address in str(caught.value)

    async def test_client_works_again_after_a_peer_vanished(self, serve: Callable, client: TransportClient) -> None:
        server, address = await serve(echo)
        assert await collect(client.call(address, "x", b"a"), self.wait) == [b"a"]
        await self.kill_server(server)
        with pytest.raises(PeerGoneError):
            await collect(client.call(address, "x", b"b"), self.wait)
        _, other = await serve(echo)
        assert await collect(client.call(other, "x", b"c"), self.wait) == [b"c"]

    async def test_client_close_fails_calls_in_flight(self, serve: Callable, transport: Transport) -> None:
        probe = _Probe()
        _, address = await serve(probe)
        client = transport.client()
        task = asyncio.create_task(collect(client.call(address, "x", b""), 3600))
        await within(probe.started.wait(), self.wait, "the handler's start")
        await client.close()
        with pytest.raises(PeerGoneError):
            await within(task, self.wait, "PeerGoneError after client.close()")

    # -- liveness (clients that report it) -----------------------------------------------------

    def _liveness(self, client: TransportClient) -> LivenessReporting:
        if not isinstance(client, LivenessReporting):
            pytest.skip("this transport's client does not report liveness")
        return client

    @property
    def _limit(self) -> float:
        """How long a liveness test waits for a change: 3 heartbeats and 1 s."""
        return 3 * self.heartbeat + 1.0

    async def test_a_frozen_server_is_unresponsive_and_every_call_ends(
        self, serve: Callable, client: TransportClient
    ) -> None:
        """Calls it read end at their deadline (or at detection without one); unread ones fail at once."""
        liveness = self._liveness(client)
        probe = _Probe()

        async def handler(request: TransportRequest) -> AsyncIterator[Chunk]:
            if request.payload == b"block":
                async for chunk in probe(request):
                    yield chunk
            else:
                yield request.payload

        server, address = await serve(handler)
        loop = asyncio.get_running_loop()
        deadline = 3 * self.heartbeat + 0.5
        untimed = asyncio.create_task(collect(client.call(address, "x", b"block"), 3600))
        timed = asyncio.create_task(collect(client.call(address, "x", b"block", timeout=deadline), 3600))
        began = loop.time()
        await until(lambda: len(probe.requests) == 2, self._limit, "both calls to reach the handler")
        await self.freeze_server(server)
        unread = asyncio.create_task(collect(client.call(address, "x", b"late"), 3600))
        took = await until(lambda: liveness.unresponsive(address), self._limit, "the frozen server to be unresponsive")
        assert took <= 2 * self.heartbeat + 0.5

        with pytest.raises(PeerUnresponsiveError) as never_read:
            await within(unread, self.wait, "the unread call's failure")
        assert never_read.value.started is False and never_read.value.status == "UNAVAILABLE"
        with pytest.raises(PeerUnresponsiveError) as was_read:
            await within(untimed, self.wait, "the failure of the read call without a deadline")
        assert was_read.value.started is True
        with pytest.raises(PeerUnresponsiveError) as refused:
            await collect(client.call(address, "x", b"new"), self.wait)
        assert refused.value.started is False
        assert not timed.done(), "a call the server read must wait for its deadline"
        with pytest.raises(DeadlineExceededError):
            await within(timed, self.wait, "the deadline of the read call")
        assert loop.time() - began >= deadline - 0.05

        await self.thaw_server(server)
        await until(lambda: not liveness.unresponsive(address), self._limit, "the thawed server to answer again")
        assert await collect(client.call(address, "x", b"back"), self.wait) == [b"back"]

    async def test_busy_or_idle_servers_stay_responsive(self, serve: Callable, client: TransportClient) -> None:
        """Heartbeats do not depend on handlers: a request silent for 3 heartbeats, then an idle connection."""
        liveness = self._liveness(client)

        async def slow(request: TransportRequest) -> AsyncIterator[Chunk]:
            await asyncio.sleep(3 * self.heartbeat)
            yield b"done"

        _, address = await serve(slow)
        checks: list[bool] = []
        call = asyncio.create_task(collect(client.call(address, "x", b""), self.wait))
        while not call.done():
            checks.append(liveness.unresponsive(address))
            await asyncio.sleep(self.heartbeat / 8)
        assert await call == [b"done"]
        for _ in range(24):  # three more heartbeats, idle
            checks.append(liveness.unresponsive(address))
            await asyncio.sleep(self.heartbeat / 8)
        assert not any(checks), "a healthy server was reported unresponsive"

    # -- unary calls (call_unary: the client's own, or the fallback on call) -------------------

    @pytest.fixture(params=["own", "fallback"])
    def unary(self, request: pytest.FixtureRequest, client: TransportClient) -> Callable[..., Awaitable[bytes | None]]:
        """``await unary(address, endpoint, payload, timeout=...)``: :func:`call_unary` on the client as it
        is (``own``: its ``call_unary`` if it has one) and on a view of it offering only ``call``
        (``fallback``): both must behave alike."""
        target: TransportClient = client if request.param == "own" else _CallOnly(client)
        return functools.partial(call_unary, target)

    async def test_unary_returns_the_one_response(self, serve: Callable, unary: Callable) -> None:
        seen: list[TransportRequest] = []

        async def handler(request: TransportRequest) -> AsyncIterator[Chunk]:
            seen.append(request)
            yield [b"infer:", request.payload]

        _, address = await serve(handler)
        payload = bytes(range(256)) * 3
        answer = await within(unary(address, "infer", payload, timeout=30.0), self.wait, "the unary answer")
        assert bytes(answer) == b"infer:" + payload
        assert seen[0].timeout is not None and 0 < seen[0].timeout <= 30.0

    async def test_unary_of_an_empty_stream_is_none_and_extra_responses_are_dropped(
        self, serve: Callable, unary: Callable
    ) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            for i in range(int(request.payload)):
                yield str(i).encode()

        _, address = await serve(handler)
        assert await within(unary(address, "x", b"0"), self.wait, "the unary answer") is None
        assert bytes(await within(unary(address, "x", b"3"), self.wait, "the unary answer")) == b"0"

    async def test_unary_handler_error_keeps_status_and_message(self, serve: Callable, unary: Callable) -> None:
        async def handler(request: TransportRequest) -> AsyncIterator[bytes]:
            raise InvalidRequestError("bad shape for input 'x'")
            yield b""

        _, address = await serve(handler)
        with pytest.raises(DyntritonError) as caught:
            await within(unary(address, "x", b""), self.wait, "the unary error")
        assert caught.value.status == "INVALID_ARGUMENT"
        assert "bad shape for input 'x'" in caught.value.message

    async def test_unary_cancelled_by_its_caller_cancels_the_handler(self, serve: Callable, unary: Callable) -> None:
        probe = _Probe()
        _, address = await serve(probe)
        task = asyncio.create_task(unary(address, "x", b""))
        await within(probe.started.wait(), self.wait, "the handler's start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await within(probe.cancelled.wait(), self.wait, "the handler's cancellation")

    async def test_unary_deadline_raises_and_cancels_the_handler(self, serve: Callable, unary: Callable) -> None:
        probe = _Probe()
        _, address = await serve(probe)
        with pytest.raises(DeadlineExceededError) as caught:
            await within(unary(address, "x", b"", timeout=0.3), self.wait, "the unary deadline")
        assert caught.value.status == "DEADLINE_EXCEEDED"
        await within(probe.cancelled.wait(), self.wait, "the handler's cancellation after the deadline")

    async def test_unary_peer_gone_before_an_answer_raises(self, serve: Callable, unary: Callable) -> None:
        probe = _Probe()
        server, address = await serve(probe)
        task = asyncio.create_task(unary(address, "x", b""))
        await within(probe.started.wait(), self.wait, "the handler's start")
        await self.kill_server(server)
        with pytest.raises(PeerGoneError) as caught:
            await within(task, self.wait, "PeerGoneError after the server vanished")
        assert caught.value.status == "UNAVAILABLE"
        with pytest.raises(PeerGoneError):
            await within(unary(address, "x", b""), self.wait, "PeerGoneError for an address nobody serves")


async def within_each(stream: AsyncIterator[bytes], wait: float) -> AsyncIterator[bytes]:
    """Yield from ``stream``, failing the test when one item takes longer than ``wait`` seconds."""
    iterator = stream.__aiter__()
    while True:
        try:
            item = await within(iterator.__anext__(), wait, "the next response")
        except StopAsyncIteration:
            return
        yield item
