"""Shared-memory regions a frontend of this host hands the worker by reference: zero copy.

A frontend whose model runs only on workers of its own host forwards a request that names
client regions (Triton's system shared-memory extension) with references instead of bytes
(:mod:`dynamo_triton.runtime.shared_memory_requests`: ``dyntriton_shm_key``/``_offset``/
``_byte_size`` per tensor, ``dyntriton_shm_host`` on the request). :func:`take_regions` maps
the named ``/dev/shm`` objects for this one request: Triton reads the inputs from the mapping
(``AppendInputData`` points into it) and writes the outputs into it (the response allocator
returns the region's address, see ``server.OutputRegion``). The mappings live as long as the
request: ``TritonServer.infer`` holds them and calls :meth:`RequestRegions.close` once Triton
released the request and its last response, which unmaps them (``munmap``, not left to the
garbage collector: an error's traceback may keep Python objects alive for a while). Nothing
stays mapped in the worker once the request is done.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dynamo_triton.errors import BackendError, DyntritonError, InvalidRequestError
from dynamo_triton.runtime.shared_memory import SHM_ROOT, host_identity
from dynamo_triton.runtime.shared_memory_requests import LOCAL_HOST, LOCAL_KEY, LOCAL_OFFSET, LOCAL_SIZE
from dyntriton_backend_triton.server import OutputRegion

if TYPE_CHECKING:
    from tritonclient.grpc import service_pb2

__all__ = ["RequestRegions", "take_regions"]

_HOST: list[str] = []  # this host's identity, computed once
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_LIBC.munmap.restype = ctypes.c_int
_LIBC.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _this_host() -> str:
    if not _HOST:
        _HOST.append(host_identity())
    return _HOST[0]


@dataclass
class RequestRegions:
    """One request's region tensors, mapped.

    :param inputs: input index -> the input's bytes (a view into the mapping, valid until :meth:`close`).
    :param outputs: the outputs Triton writes into their regions.
    :param mappings: (address, length) of each mapping.
    """

    inputs: dict[int, memoryview] = field(default_factory=dict)
    outputs: list[OutputRegion] = field(default_factory=list)
    mappings: list[tuple[int, int]] = field(default_factory=list)

    def close(self) -> None:
        """Unmap every mapping (once Triton is done with the request: its views are invalid afterwards)."""
        self.inputs.clear()
        for address, length in self.mappings:
            _LIBC.munmap(address, length)
        self.mappings.clear()


def _reference(tensor: object) -> tuple[str, int, int] | None:
    parameters = tensor.parameters  # type: ignore[attr-defined]
    if LOCAL_KEY not in parameters:
        return None
    reference = (
        parameters[LOCAL_KEY].string_param,
        parameters[LOCAL_OFFSET].int64_param,
        parameters[LOCAL_SIZE].int64_param,
    )
    for key in (LOCAL_KEY, LOCAL_OFFSET, LOCAL_SIZE):
        del parameters[key]
    return reference


def _map(key: str, length: int) -> int:
    """The address of a shared read-write mapping of the first ``length`` bytes of object ``key``."""
    try:
        fd = os.open(SHM_ROOT / key.lstrip("/"), os.O_RDWR)
    except OSError:
        raise DyntritonError(f"Unable to open shared memory region: '{key}'") from None
    try:
        if os.fstat(fd).st_size < length:
            raise InvalidRequestError(f"Invalid offset + byte size for shared memory region: '{key}'")
        address = _LIBC.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if address is None or address == _MAP_FAILED:
            error = ctypes.get_errno()
            raise DyntritonError(f"Unable to map shared memory region: '{key}' ({os.strerror(error)})")
        return int(address)
    finally:
        os.close(fd)


def take_regions(request: service_pb2.ModelInferRequest) -> RequestRegions | None:
    """Map the regions ``request`` names by reference, removing the reference parameters; None when it names none.

    :raises BackendError: UNAVAILABLE when the request was meant for another host's worker (its regions are
        not in this host's ``/dev/shm``); the frontend then tries another instance.
    """
    if LOCAL_HOST not in request.parameters:
        return None
    host = request.parameters[LOCAL_HOST].string_param
    del request.parameters[LOCAL_HOST]
    if host != _this_host():
        raise BackendError(
            "this request hands over shared memory by reference, but this worker runs on another host",
            status="UNAVAILABLE",
        )
    inputs = {index: ref for index, tensor in enumerate(request.inputs) if (ref := _reference(tensor))}
    outputs = {output.name: ref for output in request.outputs if (ref := _reference(output))}
    lengths: dict[str, int] = {}
    for key, offset, size in (*inputs.values(), *outputs.values()):
        lengths[key] = max(lengths.get(key, 0), offset + size)
    regions = RequestRegions()
    bases: dict[str, int] = {}
    try:
        for key, length in lengths.items():
            if length:
                bases[key] = _map(key, length)
                regions.mappings.append((bases[key], length))
    except BaseException:
        regions.close()
        raise
    for index, (key, offset, size) in inputs.items():
        data = (ctypes.c_char * size).from_address(bases[key] + offset) if size else b""
        regions.inputs[index] = memoryview(data).cast("B")
    for name, (key, offset, size) in outputs.items():
        if size:
            regions.outputs.append(OutputRegion(name, bases[key] + offset, size))
    return regions
