"""Loopback ports for tests and benchmarks: a free one to bind, and whether one accepts connections."""

from __future__ import annotations

import socket
import threading

__all__ = ["accepts", "free_port"]

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (free to bind, barring a race).

    Never the same port twice in one process: two servers of one test asked for a port each must
    not both be given one the kernel happened to free and hand out again.
    """
    with _lock:
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port


def accepts(port: int, host: str = "127.0.0.1", *, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host``:``port`` right now."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0
