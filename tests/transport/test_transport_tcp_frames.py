"""The tcp frame parser: any split of the byte stream gives the same frames; bad frames end the connection."""

from __future__ import annotations

import asyncio

from dyntriton_transport_tcp.frames import FrameType, request_frame, simple_frame
from dyntriton_transport_tcp.protocol import FrameProtocol
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamo_triton.errors import TransportError


class _Transport:
    """Records abort(); the parser's only use of its transport."""

    aborted = False

    def abort(self) -> None:
        self.aborted = True


def _feed(data: bytes, cuts: list[int], max_frame: int = 1 << 30) -> tuple[list, _Transport, FrameProtocol]:
    frames: list = []
    protocol = FrameProtocol(frames.append, lambda exc: None, max_frame)
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    pos = 0
    for cut in [*sorted(cuts), len(data)]:
        while pos < cut:
            buffer = protocol.get_buffer(-1)
            n = min(len(buffer), cut - pos)
            buffer[:n] = data[pos : pos + n]
            protocol.buffer_updated(n)
            pos += n
    return frames, transport, protocol


def _stream(bodies: list[bytes]) -> bytes:
    parts: list = []
    for i, body in enumerate(bodies):
        parts += request_frame(i, f"ep{i}", body, 1.5 if i % 2 else None)
        parts += simple_frame(FrameType.DATA, i, body)
        parts += simple_frame(FrameType.END, i)
    return b"".join(bytes(p) for p in parts)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 17, 1000, 65535, 65536, 300_000]), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000_000), max_size=12),
)
def test_any_split_of_the_stream_gives_the_same_frames(sizes: list[int], cuts: list[int]) -> None:
    bodies = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    data = _stream(bodies)

    async def feed() -> tuple[list, _Transport, FrameProtocol]:
        return _feed(data, [c for c in cuts if c < len(data)])

    frames, transport, _ = asyncio.run(feed())
    assert not transport.aborted
    assert len(frames) == 3 * len(bodies)
    for i, body in enumerate(bodies):
        request, response, end = frames[3 * i : 3 * i + 3]
        assert (request.type, request.request_id, request.endpoint) == (FrameType.REQUEST, i, f"ep{i}")
        # a large request received into a buffer of its own is handed on as a view of it (never copied)
        assert request.body == body and isinstance(request.body, bytes | memoryview)
        assert request.timeout == (1.5 if i % 2 else None)
        assert (response.type, response.body) == (FrameType.DATA, body)
        assert (end.type, end.body) == (FrameType.END, b"")


async def test_oversized_and_unknown_frames_abort_the_connection() -> None:
    big = b"".join(bytes(p) for p in simple_frame(FrameType.DATA, 1, b"x" * 100))
    frames, transport, protocol = _feed(big, [], max_frame=99)
    assert frames == [] and transport.aborted
    protocol.connection_lost(None)
    bogus = bytes([99]) + big[1:]
    frames, transport, _ = _feed(bogus, [])
    assert frames == [] and transport.aborted


async def test_oversized_frame_error_names_the_limit() -> None:
    errors: list = []
    protocol = FrameProtocol(lambda f: None, errors.append, 10)
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    data = b"".join(bytes(p) for p in simple_frame(FrameType.DATA, 1, b"x" * 11))
    buffer = protocol.get_buffer(-1)
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))
    protocol.connection_lost(None)
    assert transport.aborted
    assert isinstance(errors[0], TransportError) and "limit is 10 bytes" in str(errors[0])
