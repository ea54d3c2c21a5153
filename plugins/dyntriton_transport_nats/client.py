"""The nats transport's client: one connection and one inbox subscription for every call.

Each call is ``{inbox}.{n}``; the inbox subscription routes what workers publish to the call's
queue (see :mod:`dyntriton_transport_nats.wire`). A worker that vanishes is noticed at once: a
request to a subject nobody listens on comes back as a ``503`` from the NATS server (a
one-message request is sent again up to three times within ~70 ms first: nobody received it,
and nats-server may answer 503 for a subscription made moments before).

Liveness (``heartbeat`` > 0, see :class:`~dynamo_triton.transport.LivenessReporting`): every
message from a worker (answers, its acknowledgements of the requests it read, probe answers) is
a sign of life (a worker receiving a chunked request says so as chunks arrive, so a long upload
is not silence). While calls to a worker are in flight, or while it is unresponsive, the client
probes it every ``heartbeat / 4`` s of silence. After ``heartbeat`` s without a sign of life the
worker is *unresponsive*:

- calls it has not acknowledged fail at once with PeerUnresponsiveError(started=False) (their
  cancel waits in NATS, so a worker that wakes up drops them instead of running them);
- calls it read fail with PeerUnresponsiveError(started=True) unless they have a deadline, which
  they keep;
- new calls to it fail at once with PeerUnresponsiveError(started=False), unsent;
- its first sign of life makes it healthy again. An unresponsive worker with no call in flight
  is forgotten (probes stop, "nothing known") after 60 s.

The rules are :mod:`dynamo_triton.liveness`'s (probes repeat on every quiet tick: NATS may drop one).

A worker whose subscription vanished (``503`` to a probe) fails its calls with PeerGoneError.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

from dynamo_triton.errors import DeadlineExceededError, PeerGoneError, PeerUnresponsiveError, error_from_status
from dynamo_triton.liveness import Liveness, Tick
from dyntriton_transport_nats.connection import NatsSettings, connect
from dyntriton_transport_nats.server import PENDING_BYTES
from dyntriton_transport_nats.wire import (
    check_endpoint,
    chunks,
    decode_error,
    encode_timeout,
    parse_address,
)

__all__ = ["NatsClient"]

log = logging.getLogger(__name__)

_RETRY_HINT = "the worker probably stopped or crashed; retry on another instance"

#: Pauses before sending a one-message request again after a 503 (nobody received it): ~70 ms in all.
_RESEND_DELAYS = (0.01, 0.02, 0.04)

#: What a call's queue carries: ("data", payload) / ("end", b"") / ("error", payload) / ("gone", why) /
#: ("nobody", why): NATS answered 503, the request reached no worker / ("unresponsive", error).
_Item = tuple[str, Any]


class _Peer:
    """What the client knows of one worker address: its calls in flight and its liveness."""

    def __init__(self, number: int, address: str, subject: str, liveness: Liveness | None):
        self.number, self.address, self.subject = number, address, subject
        self.calls: set[str] = set()
        self.probe: asyncio.Task[None] | None = None
        self.liveness = liveness  # None without heartbeats

    @property
    def unresponsive(self) -> bool:
        return self.liveness is not None and self.liveness.unresponsive_since is not None


class _Call:
    __slots__ = ("filled", "parts", "peer", "queue", "started", "timed", "total")

    def __init__(self, peer: _Peer, timed: bool):
        self.peer, self.timed = peer, timed
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.parts: list[bytes] | None = None  # the chunks of a response being received
        self.total = self.filled = 0
        self.started = False  # the worker acknowledged (or answered) the request


class NatsClient:
    """Sends requests to ``nats:`` addresses; see :class:`dynamo_triton.transport.TransportClient`.

    :param heartbeat: seconds without a sign of life before a worker is unresponsive (0: never;
        then only NATS's "no responders" and deadlines end calls to a worker that stops answering).
    :param max_chunk: largest message payload sent, in bytes (capped by the server's ``max_payload``).
    """

    def __init__(self, settings: NatsSettings, *, heartbeat: float = 1.0, max_chunk: int | None = None):
        self.settings, self.heartbeat, self.max_chunk = settings, heartbeat, max_chunk
        self._nc: Any = None
        self._connecting: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop
        self._inbox = ""
        self._chunk = 0
        self._ids = itertools.count(1)
        self._calls: dict[str, _Call] = {}
        self._peers: dict[str, _Peer] = {}
        self._peer_numbers = itertools.count(1)
        self._probed: dict[str, _Peer] = {}  # "p{number}" -> peer
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- connection ------------------------------------------------------------------------------
    async def _connection(self) -> Any:
        if self._closed:
            raise PeerGoneError("this nats transport client is closed", hint="make a new client")
        if self._nc is not None:
            return self._nc
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect())
            self._connecting.add_done_callback(self._connected)
        # shield: one caller giving up (deadline) must not abort the connect others wait on
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._nc = task.result()

    async def _connect(self) -> Any:
        nc = await connect(
            self.settings,
            name="dyntriton frontend",
            purpose="the nats transport",
            error=PeerGoneError,
            on_disconnect=self._on_disconnect,
        )
        # Messages (and so signs of life) arrive on this loop: _alive runs per message, and
        # asyncio.get_running_loop() costs a getpid() system call each time on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self._inbox = nc.new_inbox()
        self._chunk = min(nc.max_payload, self.max_chunk or nc.max_payload)
        await nc.subscribe(self._inbox + ".>", cb=self._on_message, pending_bytes_limit=PENDING_BYTES)
        return nc

    async def _on_disconnect(self) -> None:
        # Answers published while we are away are lost: fail every call now rather than hang.
        reason = f"lost the connection to NATS at {self.settings.describe()}"
        for call in self._calls.values():
            call.queue.put_nowait(("gone", f"{reason} while waiting for {call.peer.address}"))

    # -- receiving -------------------------------------------------------------------------------
    async def _on_message(self, msg: Any) -> None:
        name, _, tail = msg.subject[len(self._inbox) + 1 :].partition(".")
        if name == "a":
            self._on_acknowledged(msg.data)
            return
        if name.startswith("p"):
            self._on_probe_answer(name, tail, msg)
            return
        call = self._calls.get(name)
        if call is None:
            return  # a call that already ended (cancelled): drop its late messages
        op, _, rest = tail.partition(".")
        if op:
            self._alive(call.peer)
        if op == "D":
            call.started = True
            total, data = int(rest), msg.data
            if total == len(data):
                call.queue.put_nowait(("data", data))
            else:
                call.parts, call.total, call.filled = [data], total, len(data)
        elif op == "M":
            if call.parts is None:
                return
            data = msg.data
            call.parts.append(data)
            call.filled += len(data)
            if call.filled >= call.total:
                # One copy, into the bytes the contract promises (consumers parse protobuf from it).
                whole, call.parts = b"".join(call.parts), None
                call.queue.put_nowait(("data", whole))
        elif op in ("E", "X", "G"):
            call.queue.put_nowait(({"E": "end", "X": "error", "G": "gone"}[op], msg.data))
        elif not op and _no_responders(msg):
            call.queue.put_nowait(
                ("nobody", f"no worker listens at {call.peer.address} (NATS answered 503, no responders)")
            )

    def _on_acknowledged(self, payload: bytes) -> None:
        for token in bytes(payload).decode().split():
            arriving = token.startswith("~")
            call = self._calls.get(token[1:] if arriving else token)
            if call is not None:
                call.started = call.started or not arriving
                self._alive(call.peer)

    def _on_probe_answer(self, name: str, op: str, msg: Any) -> None:
        peer = self._probed.get(name)
        if peer is None:
            return
        if op == "O":
            self._alive(peer)
        elif not op and _no_responders(msg):
            self._fail_peer(peer, f"the worker at {peer.address} is gone (NATS: no responders on its subject)")
            if not peer.calls:
                self._forget(peer)  # nothing left to watch: a new call learns the same from NATS at once

    # -- liveness --------------------------------------------------------------------------------
    def unresponsive(self, address: str) -> bool:
        """True while the worker at ``address`` has shown no sign of life for the heartbeat limit."""
        peer = self._peers.get(address)
        return peer is not None and peer.unresponsive

    def _alive(self, peer: _Peer) -> None:
        liveness = peer.liveness
        if liveness is not None:
            back = liveness.alive()
            if back is not None:
                log.warning("nats worker %s answers again after %.1f s unresponsive", peer.address, back)

    def _fail_peer(self, peer: _Peer, reason: str) -> None:
        for name in peer.calls:
            call = self._calls.get(name)
            if call is not None:
                call.queue.put_nowait(("gone", reason))

    def _declare_unresponsive(self, peer: _Peer, quiet: float) -> None:
        calls = [call for name in peer.calls if (call := self._calls.get(name)) is not None]
        unread = [call for call in calls if not call.started]
        log.warning(
            "nats worker %s is unresponsive (no sign of life for %.1f s); %d call(s) in flight, %d not read by it",
            *(peer.address, quiet, len(calls), len(unread)),
        )
        for call in calls:
            if not call.started or not call.timed:  # read calls with a deadline keep it
                error = PeerUnresponsiveError.silent(peer.address, quiet, read=call.started)
                call.queue.put_nowait(("unresponsive", error))

    def _peer(self, address: str, subject: str) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            liveness = Liveness(self.heartbeat, self._loop.time, repeat_pings=True) if self.heartbeat > 0 else None
            peer = self._peers[address] = _Peer(next(self._peer_numbers), address, subject, liveness)
            self._probed[f"p{peer.number}"] = peer
        if self.heartbeat > 0 and (peer.probe is None or peer.probe.done()):
            peer.probe = asyncio.create_task(self._watch(peer), name=f"dyntriton-nats-probe:{address}")
        return peer

    def _leave(self, name: str, peer: _Peer) -> None:
        peer.calls.discard(name)
        if not peer.calls and not peer.unresponsive:
            self._forget(peer)

    def _forget(self, peer: _Peer) -> None:
        if self._peers.get(peer.address) is peer:
            del self._peers[peer.address]
        self._probed.pop(f"p{peer.number}", None)
        if peer.probe is not None and peer.probe is not asyncio.current_task():
            peer.probe.cancel()

    async def _watch(self, peer: _Peer) -> None:
        """Probe ``peer`` on each quiet tick; declare it unresponsive after ``heartbeat`` s of quiet."""
        liveness = peer.liveness
        assert liveness is not None
        while True:
            await asyncio.sleep(liveness.interval)
            if self._peers.get(peer.address) is not peer:
                return
            if liveness.forgotten(idle=not peer.calls):
                self._forget(peer)
                return
            if self._nc is None or not self._nc.is_connected:
                continue  # our own disconnect fails the calls; nothing to learn about the worker
            todo = liveness.tick()
            if todo & Tick.UNRESPONSIVE:
                self._declare_unresponsive(peer, liveness.silent_for())
            if todo & Tick.PING:
                try:
                    await self._nc.publish(f"{peer.subject}.P", b"", reply=f"{self._inbox}.p{peer.number}")
                except Exception as exc:  # a closing connection: the calls fail through the disconnect
                    log.debug("probe of %s failed: %s", peer.address, exc)

    # -- calls -----------------------------------------------------------------------------------
    async def call(
        self, address: str, endpoint: str, payload: bytes, *, timeout: float | None = None
    ) -> AsyncIterator[bytes]:
        """Send one request to ``address`` and yield each response payload; see the transport contract."""
        subject = parse_address(address)
        check_endpoint(endpoint)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                nc = await self._connection()
        except TimeoutError:
            raise DeadlineExceededError(
                f"deadline of {timeout} s exceeded while connecting to NATS for {address} (endpoint {endpoint!r})"
            ) from None
        peer = self._peer(address, subject)
        if peer.liveness is not None and peer.liveness.unresponsive_since is not None:
            raise PeerUnresponsiveError.silent(address, peer.liveness.silent_for(), read=None)
        name = str(next(self._ids))
        reply = f"{self._inbox}.{name}"
        call = self._calls[name] = _Call(peer, timed=deadline is not None)
        peer.calls.add(name)
        finished = False
        resends = 0
        try:
            await self._send_request(nc, subject, reply, endpoint, payload, deadline)
            while True:
                try:
                    if call.queue.empty():
                        async with asyncio.timeout_at(deadline):
                            kind, body = await call.queue.get()
                    else:
                        kind, body = call.queue.get_nowait()
                except TimeoutError:
                    raise DeadlineExceededError(
                        f"deadline of {timeout} s exceeded waiting for {address} (endpoint {endpoint!r})"
                    ) from None
                if kind == "data":
                    yield body
                elif kind == "end":
                    finished = True
                    return
                elif kind == "error":
                    finished = True
                    raise error_from_status(*decode_error(body))
                elif kind == "unresponsive":
                    raise body
                elif kind == "nobody" and resends < len(_RESEND_DELAYS) and len(payload) <= self._chunk:
                    # Nobody received it, so sending it again cannot run it twice: nats-server (2.9)
                    # may answer 503 for a subscription made moments ago, after its subscriber's flush.
                    await asyncio.sleep(_RESEND_DELAYS[resends])
                    resends += 1
                    await self._send_request(nc, subject, reply, endpoint, payload, deadline)
                else:
                    finished = True
                    why = body if isinstance(body, str) else bytes(body).decode(errors="replace")
                    raise PeerGoneError(why, hint=_RETRY_HINT)
        finally:
            self._calls.pop(name, None)
            self._leave(name, peer)
            if not finished and self._nc is not None and self._nc.is_connected:
                # Tell the worker to cancel; never wait for it here (we may be being cancelled).
                task = asyncio.create_task(self._nc.publish(f"{subject}.C", b"", reply=reply))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _send_request(
        self, nc: Any, subject: str, reply: str, endpoint: str, payload: bytes, deadline: float | None
    ) -> None:
        view = memoryview(payload).cast("B")
        remaining = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        head = f"{subject}.R.{encode_timeout(remaining)}.{view.nbytes}.{endpoint}"
        try:
            for number, piece in enumerate(chunks([view], self._chunk)):
                await nc.publish(head if number == 0 else f"{subject}.M", piece, reply=reply)
        except Exception as exc:
            raise PeerGoneError(
                f"cannot send to {subject} through NATS at {self.settings.describe()}: {type(exc).__name__} {exc}",
                hint=_RETRY_HINT,
            ) from exc

    async def close(self) -> None:
        """Close the connection; calls in flight raise PeerGoneError."""
        self._closed = True
        for call in self._calls.values():
            call.queue.put_nowait(("gone", f"this client was closed while waiting for {call.peer.address}"))
        for peer in list(self._peers.values()):
            self._forget(peer)
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # already broken: nothing left to release
                log.debug("closing the NATS connection: %s", exc)


def _no_responders(msg: Any) -> bool:
    headers = msg.headers or {}
    return str(headers.get("Status", "")).startswith("503")
