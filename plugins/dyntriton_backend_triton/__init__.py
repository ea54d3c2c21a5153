"""The ``triton`` backend plugin: Triton Inference Server embedded in the worker through its C API.

Registering is cheap: nothing here loads ``libtritonserver``; the factory and
the ``doctor`` command import the heavy modules when used.
"""

from __future__ import annotations

from typing import Any

from dynamo_triton import hookimpl
from dynamo_triton.registry import Register


def _backend(settings: Any) -> Any:
    from dyntriton_backend_triton.backend import TritonBackend

    return TritonBackend(settings)


def _doctor() -> Any:
    from dyntriton_backend_triton.doctor import doctor

    return doctor


@hookimpl
def dyntriton_register_backends(register: Register) -> None:
    register("triton", _backend, summary="Triton Inference Server in-process (C API); python, onnx, ... backends")


@hookimpl
def dyntriton_register_commands(register: Register) -> None:
    register("doctor", _doctor, summary="Check the Triton installation the triton backend would embed.")
