"""The ``inproc`` transport plugin: frontend and workers in one process, no sockets."""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _factory() -> Any:
    from dyntriton_transport_inproc.transport import InprocTransport

    return InprocTransport()


@hookimpl
def dyntriton_register_transports(register: Register) -> None:
    register("inproc", _factory, summary="in-process calls, no sockets; for serve in one process")
