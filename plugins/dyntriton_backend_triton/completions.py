"""Triton's callbacks without the GIL: the C library built from ``_completions.c``, and its event-loop side.

With ctypes callbacks, Triton's threads take Python's GIL from the event loop thread
several times per request (allocate an output, complete a response, release a request),
a contended handoff measured at ~280 us of CPU per small request. The C library answers
those callbacks without Python: it allocates outputs with malloc and queues completions,
signalling an eventfd. :class:`Completions` watches that eventfd on the event loop and
hands each queued event to the server on the loop's own thread, in batches.

Output buffers stay where Triton wrote them: :meth:`Completions.view` adopts a buffer
(Triton's release then leaves it alone) and returns a memoryview that frees it with
``dt_free`` once the last reference to the view is gone.

The library is an optional build product of ``pip install`` (a C compiler and Linux's
eventfd are needed); without it :func:`load_completions` returns None and the server
uses ctypes callbacks, correct but slower.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
from collections.abc import Callable

__all__ = ["EVENT_RELEASED", "EVENT_RESPONSE", "Completions", "load_completions"]

log = logging.getLogger(__name__)

EVENT_RESPONSE = 1
EVENT_RELEASED = 2
_BATCH = 512


class _Event(ctypes.Structure):
    _fields_ = (
        ("kind", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("object", ctypes.c_void_p),
        ("key", ctypes.c_uint64),
    )


class _Owner:
    """Gives back Python's reference to an output buffer (dt_free) when the last view of it goes away."""

    __slots__ = ("_address", "_free")

    def __init__(self, free: Callable[[int], None], address: int):
        self._free, self._address = free, address

    def __del__(self) -> None:
        self._free(self._address)


#: ``on_event(kind, object_address, flags, key)``, called on the event loop's thread.
EventHandler = Callable[[int, int, int, int], None]


class Completions:
    """The C callbacks (as addresses Triton can call) and the drain of their event queue."""

    def __init__(self, lib: ctypes.CDLL):
        # Every function here returns at once and no Triton thread ever waits for the GIL (the callbacks
        # are C): the calls keep the GIL instead of handing it over and taking it back each time.
        lib = ctypes.PyDLL(lib._name, handle=lib._handle, use_errno=True)
        self._lib = lib
        lib.dt_init.restype = ctypes.c_int
        lib.dt_drain.restype = ctypes.c_size_t
        lib.dt_drain.argtypes = (ctypes.POINTER(_Event), ctypes.c_size_t)
        lib.dt_dropped.restype = ctypes.c_uint64
        lib.dt_adopt.argtypes = (ctypes.c_void_p,)
        lib.dt_free.argtypes = (ctypes.c_void_p,)
        lib.dt_owns.argtypes = (ctypes.c_void_p, ctypes.c_uint64)
        lib.dt_owns.restype = ctypes.c_int
        self.fd = lib.dt_init()
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "eventfd() failed")
        self._events = (_Event * _BATCH)()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handler: EventHandler | None = None
        self._free = lib.dt_free
        self._adopt = lib.dt_adopt
        self._owns = lib.dt_owns

    def address(self, name: str) -> int:
        """The address of C function ``name`` (``dt_alloc``, ``dt_release``, ``dt_response_complete``...)."""
        value = ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value
        if value is None:
            raise OSError(f"{name} is missing from the completions library")
        return value

    def attach(self, loop: asyncio.AbstractEventLoop, handler: EventHandler) -> None:
        """Drain on ``loop`` (moving off another loop first); cheap when already attached there."""
        if loop is self._loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        self._loop, self._handler = loop, handler
        loop.add_reader(self.fd, self._drain)

    def detach(self) -> None:
        """Stop watching the eventfd (events stay queued)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.fd)
        self._loop = None

    def _drain(self) -> None:
        handler = self._handler
        events = self._events
        count = self._lib.dt_drain(events, _BATCH)
        for index in range(count):
            event = events[index]
            try:
                handler(event.kind, event.object or 0, event.flags, event.key)  # type: ignore[misc]
            except Exception:
                log.exception("handling a Triton completion failed")

    def view(self, address: int, size: int) -> memoryview | None:
        """Take a reference to the output buffer at ``address`` (Triton still holds one) and view its
        first ``size`` bytes; the reference is given back when the last view goes.

        None when the buffer did not come from the C allocator (the caller copies it instead).
        """
        if not self._owns(address, size):
            return None
        self._adopt(address)
        return self.own(address, size)

    def own(self, address: int, size: int) -> memoryview:
        """View the first ``size`` bytes of an output buffer Python already holds a reference to (the
        fast path adopted it in C); the reference is given back when the last view goes."""
        array = (ctypes.c_char * size).from_address(address)
        array._owner = _Owner(self._free, address)  # type: ignore[attr-defined]
        return memoryview(array).cast("B")

    def bind(self, triton: ctypes.CDLL) -> ctypes.CDLL | None:
        """Give the C library Triton's functions (for the fast path); the library, or None when Triton
        lacks one of them."""
        self._lib.dt_bind.argtypes = (ctypes.c_void_p,)
        self._lib.dt_bind.restype = ctypes.c_int
        return self._lib if self._lib.dt_bind(triton._handle) == 0 else None

    def dropped(self) -> int:
        """Events the C side could not queue (out of memory); always 0 in practice."""
        return int(self._lib.dt_dropped())


def built_library() -> str | None:
    """Path of the C completions library the install built, or None (no compiler at install time)."""
    spec = importlib.util.find_spec("dyntriton_backend_triton._completions")
    return spec.origin if spec is not None and spec.origin else None


def load_completions() -> Completions | None:
    """The built C library, or None (logged once) when it is not there or cannot start."""
    origin = built_library()
    if origin is None:
        log.info(
            "Triton callbacks run in Python (slower): the C completions library was not built; "
            "reinstall dynamo-triton with a C compiler present"
        )
        return None
    try:
        return Completions(ctypes.CDLL(origin, use_errno=True))
    except OSError as exc:
        log.warning("Triton callbacks run in Python (slower): cannot load %s: %s", origin, exc)
        return None
