"""The inproc transport: servers in a process-wide table, handlers called directly, no sockets.

A call runs the handler in its own task and passes each response through a
small queue, so cancellation, deadlines and server stop behave exactly as over
tcp, and payloads are handed over as the very same objects (never copied).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from dynamo_triton.errors import DeadlineExceededError, PeerGoneError, TransportError, error_from_status
from dynamo_triton.request_runner import run_request
from dynamo_triton.transport import Chunk, Handler, TransportRequest

__all__ = ["InprocClient", "InprocServer", "InprocTransport"]

log = logging.getLogger(__name__)

#: Every started server of this process, by address.
_SERVERS: dict[str, InprocServer] = {}

_END = object()


class InprocServer:
    """Registers ``handler`` under ``inproc://<uuid>`` until stopped.

    It is the :class:`~dynamo_triton.request_runner.Replier` of its requests, keyed by each call's queue:
    answers are put in the queue as the objects a remote client would raise or receive.
    """

    lost: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self.address = f"inproc://{uuid.uuid4()}"
        self.handler: Handler
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, handler: Handler) -> str:
        """Make the server reachable; returns its address."""
        self.handler = handler
        _SERVERS[self.address] = self
        return self.address

    async def stop(self, *, grace: float = 10.0) -> None:
        """Unregister, wait up to ``grace`` s for in-flight requests, then cancel the rest."""
        if _SERVERS.get(self.address) is not self:
            return
        self.stopping = True
        del _SERVERS[self.address]
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        pending = {task for task in self.tasks if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    def submit(self, request: TransportRequest, queue: asyncio.Queue) -> asyncio.Task[None]:
        """Run the handler for ``request`` in a task feeding ``queue``."""
        task = asyncio.create_task(run_request(self.handler, request, queue, self))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- answers (the Replier of dynamo_triton.request_runner) -----------------------------------
    def data(self, queue: asyncio.Queue, chunk: Chunk) -> None:
        queue.put_nowait(_payload(chunk))

    def end(self, queue: asyncio.Queue) -> None:
        queue.put_nowait(_END)

    async def error(self, queue: asyncio.Queue, status: str, message: str) -> None:
        queue.put_nowait(error_from_status(status, message))  # a fresh error, as a remote client gets

    async def gone(self, queue: asyncio.Queue) -> None:
        queue.put_nowait(PeerGoneError(f"the server at {self.address} is shutting down"))

    def finished(self, queue: asyncio.Queue) -> None:
        pass


def _payload(chunk: object) -> bytes | bytearray | memoryview:
    """A handler's chunk as one payload: parts are joined (the one copy a single payload needs)."""
    if isinstance(chunk, bytes | bytearray | memoryview):
        return chunk
    if isinstance(chunk, list | tuple) and all(isinstance(part, bytes | bytearray | memoryview) for part in chunk):
        return b"".join(chunk)
    raise TypeError(f"handler yielded {type(chunk).__name__}; responses must be bytes-like or a list of bytes-like")


@dataclass
class InprocClient:
    """Calls servers of this process by address."""

    _calls: set[asyncio.Queue] = field(default_factory=set)

    async def call(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """Run the handler of the server at ``address`` and yield its responses; see the transport contract."""
        if not address.startswith("inproc://"):
            raise TransportError(f"bad inproc address {address!r}; expected 'inproc://<id>'")
        server = _SERVERS.get(address)
        if server is None:
            raise PeerGoneError(
                f"no in-process server at {address}",
                hint="the worker stopped, or lives in another process (use the tcp transport)",
            )
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        queue: asyncio.Queue = asyncio.Queue()
        task = server.submit(TransportRequest(endpoint, payload, timeout), queue)
        self._calls.add(queue)
        try:
            while True:
                try:
                    if queue.empty():
                        async with asyncio.timeout_at(deadline):
                            item = await queue.get()
                    else:
                        item = queue.get_nowait()
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"deadline of {timeout} s exceeded waiting for {address} (endpoint {endpoint!r})"
                    ) from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._calls.discard(queue)
            task.cancel()

    async def close(self) -> None:
        """Make every call in flight raise PeerGoneError."""
        for queue in list(self._calls):
            queue.put_nowait(PeerGoneError("the inproc client was closed while the call was running"))
        self._calls.clear()


@dataclass
class InprocTransport:
    """Frontend and workers in one process and one event loop."""

    name: str = "inproc"

    def server(self, host: str = "127.0.0.1", port: int = 0) -> InprocServer:
        """A server; ``host`` and ``port`` are ignored (there is no socket)."""
        return InprocServer()

    def client(self) -> InprocClient:
        """A client reaching every inproc server of this process."""
        return InprocClient()
