"""Addresses to print for a listener: ones a client can dial, never ``0.0.0.0``."""

from __future__ import annotations

__all__ = ["dial_address"]

_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def dial_address(host: str, port: int) -> str:
    """``host:port`` as a client on this machine dials it.

    A wildcard bind (``0.0.0.0``, ``::``) is shown as ``localhost:PORT (every interface)``:
    the listener accepts this host's other addresses too. IPv6 hosts get brackets.
    """
    if host in _WILDCARDS:
        return f"localhost:{port} (every interface)"
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"
