"""The triton backend's settings (cheap to import: nothing here loads Triton)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from dynamo_triton.backend import BackendSettings
from dynamo_triton.settings import setting

__all__ = ["TritonSettings"]


@dataclass(frozen=True)
class TritonSettings(BackendSettings):
    """What the triton backend's factory receives: the common backend settings and Triton's own.

    :param triton_home: the Triton installation to embed (None: /opt/tritonserver, then the wheel).
    :param model_load_retries: times Triton tries again a model whose load failed.
    :param c_callbacks: take Triton's completions through the C extension (False: ctypes callbacks).
    :param fast_path: serve plain unary requests in the C extension (``fastpath.py``; False: every request
        through the general path).
    """

    __panel__ = "triton backend"

    triton_home: str | None = setting(
        None,
        "--triton-home",
        envvar="TRITON_HOME",
        type=click.Path(file_okay=False),
        help="Triton installation to embed (default: /opt/tritonserver, then the nvidia-pytriton wheel).",
    )
    model_load_retries: int = setting(
        0,
        "--model-load-retries",
        envvar="DYN_MODEL_LOAD_RETRIES",
        type=click.IntRange(min=0),
        help="Times a model whose load failed is tried again (0: fail at the first error, with its reason).",
    )
    c_callbacks: bool = True
    fast_path: bool = True
