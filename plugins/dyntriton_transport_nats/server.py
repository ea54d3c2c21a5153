"""The nats transport's server: one subscription per worker, one task per request.

Each request the server reads (all its chunks arrived, its handler started) is acknowledged to
its client, in one message per client inbox for all the requests read in one loop iteration: a
client whose worker stops answering fails the calls it never acknowledged as never started (safe
to send elsewhere). Probes are answered by the subscription itself, so a worker whose handlers
are all busy still answers; only a frozen or stuck process (its event loop not running) goes silent.

Threading and memory: everything runs on the event loop that called :meth:`NatsServer.start`.
A request that fits one message reaches the handler as that message's bytes; a chunked one
is received into a ``bytearray`` of its announced size and handed over as a memoryview (valid
while the handler runs). Responses go out as slices of what the handler yielded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dynamo_triton.errors import TransportError
from dynamo_triton.request_runner import run_request
from dynamo_triton.transport import Chunk, Handler, TransportRequest
from dyntriton_transport_nats.connection import NatsSettings, connect
from dyntriton_transport_nats.wire import ADDRESS_PREFIX, as_parts, chunks, decode_timeout, encode_error

__all__ = ["NatsServer"]

log = logging.getLogger(__name__)

#: Bytes a subscription may hold unprocessed before nats-py drops messages (a 64 MiB request
#: and then some must fit while the loop is busy).
PENDING_BYTES = 1 << 30


class _Incoming:
    """A chunked request being received."""

    __slots__ = ("buffer", "endpoint", "filled", "timeout")

    def __init__(self, endpoint: str, timeout: float | None, total: int, first: bytes):
        self.endpoint, self.timeout = endpoint, timeout
        self.buffer = bytearray(total)
        self.buffer[: len(first)] = first
        self.filled = len(first)


class NatsServer:
    """Serves a handler on a NATS subject; see :class:`dynamo_triton.transport.TransportServer`.

    :param subject: the worker's subject (unique per server); the advertised address is ``nats:SUBJECT``.
    :param max_chunk: largest message payload sent, in bytes (capped by the server's ``max_payload``).
    """

    def __init__(self, settings: NatsSettings, subject: str, *, max_chunk: int | None = None):
        self.settings, self.subject, self.max_chunk = settings, subject, max_chunk
        self.handler: Handler
        self.address = ADDRESS_PREFIX + subject
        self.stopping = False
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._incoming: dict[str, _Incoming] = {}
        self._nc: Any = None
        self._sub: Any = None
        self._chunk = 0
        self._silent = False
        # (reply subject, read) of the calls read, or still arriving, since the last acknowledgement
        self._unacknowledged: list[tuple[str, bool]] = []
        self._acknowledging: asyncio.Task[None] | None = None
        self._held: list[Any] | None = None  # messages not read while frozen (see freeze())
        self._thawed = asyncio.Event()
        self._thawed.set()

    async def start(self, handler: Handler) -> str:
        """Connect, subscribe and return ``nats:SUBJECT`` once the server knows the subscription."""
        self.handler = handler
        self._nc = await connect(
            self.settings,
            name=f"dyntriton worker {self.subject}",
            purpose="the nats transport",
            error=TransportError,
            on_disconnect=self._on_disconnect,
        )
        self._chunk = min(self._nc.max_payload, self.max_chunk or self._nc.max_payload)
        self._sub = await self._nc.subscribe(
            self.subject + ".>", cb=self._on_message, pending_bytes_limit=PENDING_BYTES
        )
        # Round trip: the server has the subscription before anyone reads our address.
        await self._nc.flush(timeout=self.settings.timeout)
        return self.address

    async def _on_disconnect(self) -> None:
        # Whatever the handlers answer now is lost; clients see 503 or their own disconnect.
        for task in list(self.tasks.values()):
            task.cancel()
        self._incoming.clear()

    async def _on_message(self, msg: Any) -> None:
        if self._held is not None:
            self._held.append(msg)
            return
        await self._read(msg)

    async def _read(self, msg: Any) -> None:
        op, _, rest = msg.subject[len(self.subject) + 1 :].partition(".")
        reply: str = msg.reply
        if not reply:
            return
        if op == "M":
            incoming = self._incoming.get(reply)
            if incoming is None:
                return  # cancelled while arriving
            data = msg.data
            incoming.buffer[incoming.filled : incoming.filled + len(data)] = data
            incoming.filled += len(data)
            if incoming.filled >= len(incoming.buffer):
                del self._incoming[reply]
                self._dispatch(reply, incoming.endpoint, memoryview(incoming.buffer), incoming.timeout)
            else:
                self._acknowledge_soon(reply, read=False)
        elif op == "R":
            timeout_token, total_token, endpoint = rest.split(".", 2)
            if self.stopping:
                await self._publish(f"{reply}.G", self.stopping_error())
                return
            timeout, total = decode_timeout(timeout_token), int(total_token)
            if total == len(msg.data):
                self._dispatch(reply, endpoint, msg.data, timeout)
            else:
                self._incoming[reply] = _Incoming(endpoint, timeout, total, msg.data)
                self._acknowledge_soon(reply, read=False)
        elif op == "C":
            self._incoming.pop(reply, None)
            running = self.tasks.get(reply)
            if running is not None:
                running.cancel()
        elif op == "P":
            await self._publish(f"{reply}.O")

    def _dispatch(self, reply: str, endpoint: str, payload: bytes | memoryview, timeout: float | None) -> None:
        request = TransportRequest(endpoint, payload, timeout)
        self.tasks[reply] = asyncio.create_task(
            run_request(self.handler, request, reply, self), name=f"dyntriton-nats:{endpoint}"
        )
        self._acknowledge_soon(reply, read=True)

    def _acknowledge_soon(self, reply: str, *, read: bool) -> None:
        self._unacknowledged.append((reply, read))
        if self._acknowledging is None:
            self._acknowledging = asyncio.create_task(self._acknowledge())

    async def _acknowledge(self) -> None:
        """Tell each client which of its requests were read, and which are still arriving.

        Runs once per burst of messages. Calls that already finished are left out (their answer
        told the client); a chunked request still arriving is named ``~n``: the worker is alive
        and reading it, however long the upload takes.
        """
        try:
            while self._unacknowledged:
                marks, self._unacknowledged = self._unacknowledged, []
                by_inbox: dict[str, dict[str, None]] = {}
                for reply, read in marks:
                    if reply in (self.tasks if read else self._incoming):
                        inbox, _, name = reply.rpartition(".")
                        by_inbox.setdefault(inbox, {})[name if read else "~" + name] = None
                for inbox, names in by_inbox.items():
                    with contextlib.suppress(Exception):  # a closing connection: the client learns otherwise
                        await self._publish(f"{inbox}.a", " ".join(names).encode())
        finally:
            self._acknowledging = None

    def stopping_error(self) -> bytes:
        return f"the server at {self.address} is shutting down".encode()

    async def _publish(self, subject: str, payload: bytes | memoryview = b"") -> None:
        if not self._thawed.is_set():
            await self._thawed.wait()
        await self._nc.publish(subject, payload)

    def freeze(self) -> None:
        """Read and send nothing more, connection and subscription kept, like a stopped process.

        For tests of liveness: messages for this worker are held in arrival order (as NATS would
        buffer them for a stopped process) and what handlers publish waits, until :meth:`thaw`.
        """
        if self._held is None:
            self._held = []
        self._thawed.clear()

    async def thaw(self) -> None:
        """Undo :meth:`freeze`: publish what waited, then read the held messages in order."""
        self._thawed.set()
        while self._held:
            await self._read(self._held.pop(0))
        self._held = None

    # -- answers (the Replier of dynamo_triton.request_runner, keyed by reply subject) -------------
    lost: tuple[type[BaseException], ...] = ()

    async def data(self, reply: str, chunk: Chunk) -> None:
        parts = as_parts(chunk)  # TypeError before anything is sent: the call fails alone
        total = sum(part.nbytes for part in parts)
        first = True
        for payload in chunks(parts, self._chunk):
            await self._publish(f"{reply}.D.{total}" if first else f"{reply}.M", payload)
            first = False

    async def end(self, reply: str) -> None:
        await self._publish(f"{reply}.E")

    async def error(self, reply: str, status: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await self._publish(f"{reply}.X", encode_error(status, message))

    async def gone(self, reply: str) -> None:
        if not self._silent:
            with contextlib.suppress(Exception):
                await self._publish(f"{reply}.G", self.stopping_error())

    def finished(self, reply: str) -> None:
        self.tasks.pop(reply, None)

    async def abort(self) -> None:
        """Vanish like a crashed process: handlers cancelled, nobody told, the connection dropped."""
        if self._nc is None:
            return
        self._silent = self.stopping = True
        self._held = None
        self._thawed.set()
        for task in list(self.tasks.values()):
            task.cancel()
        nc, self._nc = self._nc, None
        with contextlib.suppress(Exception):
            await nc.close()

    async def stop(self, *, grace: float = 10.0) -> None:
        """Refuse new requests (``G``), wait up to ``grace`` s for running ones, cancel the rest, disconnect."""
        if self._nc is None:
            return
        self.stopping = True
        self._held = None
        self._thawed.set()
        pending = set(self.tasks.values())
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        pending = {task for task in self.tasks.values() if not task.done()}
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        nc, self._nc = self._nc, None
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
            await nc.flush(timeout=self.settings.timeout)
        with contextlib.suppress(Exception):
            await nc.close()
