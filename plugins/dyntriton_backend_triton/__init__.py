"""The ``triton`` backend plugin: Triton Inference Server embedded in the worker through its C API.

Registering is cheap: nothing here loads ``libtritonserver``; the factory and
the ``doctor`` command import the heavy modules when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynamo_triton import hookimpl
from dyntriton_backend_triton.options import TritonSettings

if TYPE_CHECKING:
    from dynamo_triton.registry import BackendRegister, CommandRegister


def _backend(settings: TritonSettings) -> Any:
    from dyntriton_backend_triton.backend import TritonBackend

    return TritonBackend(settings)


def _doctor() -> Any:
    from dyntriton_backend_triton.doctor import doctor

    return doctor


@hookimpl
def dyntriton_register_backends(register: BackendRegister) -> None:
    register(
        "triton",
        _backend,
        settings=TritonSettings,
        traits=("default",),
        summary="Triton Inference Server in-process (C API); python, onnx, ... backends",
    )


@hookimpl
def dyntriton_register_commands(register: CommandRegister) -> None:
    register("doctor", _doctor, summary="Check the Triton installation the triton backend would embed.")
