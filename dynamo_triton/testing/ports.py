"""Loopback ports for tests and benchmarks: a free one to bind, and whether one accepts connections."""

from __future__ import annotations

import socket

__all__ = ["accepts", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (free to bind, barring a race)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int, host: str = "127.0.0.1", *, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host``:``port`` right now."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0
