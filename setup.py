"""Build the one C part of dynamo-triton: Triton's callbacks without the GIL (optional).

Everything else is declared in pyproject.toml. The library is plain C loaded with ctypes
(plugins/dyntriton_backend_triton/completions.py); when it cannot be built (no compiler,
no Linux eventfd) the install still succeeds and the backend uses ctypes callbacks.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dyntriton_backend_triton._completions",
            sources=["plugins/dyntriton_backend_triton/_completions.c"],
            extra_compile_args=["-O2"],
            libraries=["dl", "pthread"],
            optional=True,
        )
    ]
)
