"""The server side of every transport: run a handler for one request, give it exactly one terminal answer.

A transport server receives a request, then calls :func:`run_request` in the request's own task
with a :class:`Replier` that knows how to put answers on its wire. The runner owns the rules of
the transport contract (:mod:`dynamo_triton.transport`), so every transport keeps them alike:

- each chunk the handler yields goes out through :meth:`Replier.data`, then :meth:`Replier.end`;
- the request's ``timeout`` bounds the handler on the server too: past it the answer is
  :class:`~dynamo_triton.errors.DeadlineExceededError` (``DEADLINE_EXCEEDED``), whatever the transport;
- a :class:`~dynamo_triton.errors.DyntritonError` is answered with its status and message; any other
  exception is logged (a bug) and answered ``INTERNAL``;
- a request cancelled because the server stops is answered :meth:`Replier.gone` (the client raises
  PeerGoneError and may retry elsewhere); cancelled otherwise (the client went away or cancelled),
  it gets no answer: nobody is listening;
- an exception of :attr:`Replier.lost` while answering means the peer is gone: nothing more is sent.

The handler's stream is always closed (``aclose``) before the answer, so a handler's ``finally``
blocks run before the client hears the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from dynamo_triton.errors import DeadlineExceededError, DyntritonError
from dynamo_triton.transport import Chunk, Handler, TransportRequest

__all__ = ["Replier", "run_request"]

log = logging.getLogger(__name__)

Key = TypeVar("Key", contravariant=True)


class Replier(Protocol[Key]):
    """How one transport answers a request, addressed by ``key`` (a request id, a reply subject...).

    ``key`` lets one object (a connection, a server) answer all its requests, and :meth:`data` and
    :meth:`end` may answer without a coroutine when nothing needs to wait (an in-process queue): the
    runner allocates nothing per chunk or per request beyond what they do.
    """

    #: Exceptions that, raised while answering, mean the peer is gone (e.g. ``(ConnectionError, OSError)``).
    lost: tuple[type[BaseException], ...]

    @property
    def stopping(self) -> bool:
        """True once the server stops: a cancelled request is then answered :meth:`gone`."""

    def data(self, key: Key, chunk: Chunk) -> Awaitable[None] | None:
        """Send one response chunk (returns an awaitable when sending waits, e.g. for the socket to drain).

        Raises TypeError for a chunk that is not bytes-like nor a list of bytes-like (the call fails
        alone), DyntritonError for one it cannot send (e.g. too large).
        """

    def end(self, key: Key) -> Awaitable[None] | None:
        """Send the end of the response stream (the success answer); an awaitable when sending waits."""

    async def error(self, key: Key, status: str, message: str) -> None:
        """Send an error answer; never raises for a peer that is gone."""

    async def gone(self, key: Key) -> None:
        """Tell the client the server is shutting down; never raises for a peer that is gone."""

    def finished(self, key: Key) -> None:
        """Called last, however the request ended (e.g. to forget its task)."""


async def run_request(handler: Handler, request: TransportRequest, key: Key, replier: Replier[Key]) -> None:
    """Run ``handler`` for ``request`` and answer it through ``replier`` (see the module docstring)."""
    try:
        try:
            async with asyncio.timeout(request.timeout) as deadline:
                stream = handler(request)
                try:
                    async for chunk in stream:
                        sending = replier.data(key, chunk)
                        if sending is not None:
                            await sending
                finally:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise DeadlineExceededError(
                f"deadline of {request.timeout} s exceeded on the server for endpoint {request.endpoint!r}"
            ) from exc
        ending = replier.end(key)
        if ending is not None:
            await ending
    except asyncio.CancelledError:
        if replier.stopping:
            await replier.gone(key)
        raise
    except replier.lost:
        pass  # the client is gone; nobody to tell
    except DyntritonError as exc:
        await replier.error(key, exc.status, str(exc))
    except Exception as exc:
        log.exception("handler for endpoint %r failed", request.endpoint)
        await replier.error(key, "INTERNAL", f"{type(exc).__name__}: {exc}")
    finally:
        replier.finished(key)
