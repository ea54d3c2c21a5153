"""Default limits that both the core and a plugin's options use, defined once (cheap to import)."""

from __future__ import annotations

__all__ = ["DEFAULT_STREAM_MAX_PENDING_BYTES", "DEFAULT_STREAM_WINDOW"]

#: Requests of one stream in flight or waiting to be written (``--stream-window``).
DEFAULT_STREAM_WINDOW = 1024
#: Bytes of requests in flight and produced answers one stream may hold before it stops reading and pulling.
DEFAULT_STREAM_MAX_PENDING_BYTES = 256 * 1024 * 1024
