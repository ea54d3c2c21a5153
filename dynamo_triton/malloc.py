"""glibc malloc tuning for a process that moves MiB-sized tensors.

With glibc's defaults every freshly allocated MiB buffer grows the heap and the
next free trims it again (``brk``), so each 1 MiB round trip page-faults ~500
times; measured here, raising the mmap threshold to 4 MiB and the trim threshold
to 256 MiB gave ~2.5x more 1 MiB requests per second through frontend + worker.

:func:`tune_malloc` applies the thresholds to the running process (``mallopt``)
and exports the equivalent ``MALLOC_*_`` variables so children (workers, Triton's
python-backend stubs) start tuned too. Values the operator already set win.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import MutableMapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_malloc"]

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_ENV = {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD}


def tune_malloc(environ: MutableMapping[str, str] | None = None) -> bool:
    """Apply the thresholds to this process and its future children; True when glibc accepted them."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, default in _ENV.items():
        environ.setdefault(name, str(default))
        try:
            values[name] = int(environ[name])
        except ValueError:
            values[name] = default
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, values["MALLOC_MMAP_THRESHOLD_"]) == 1
    return mallopt(_M_TRIM_THRESHOLD, values["MALLOC_TRIM_THRESHOLD_"]) == 1 and applied
