"""The one dtype table: KServe datatype <-> numpy dtype <-> Triton ``TYPE_*`` <-> Dynamo name.

Every conversion of a type name in dyntriton goes through this table. Plugins
add rows through the ``dyntriton_register_dtypes`` hook (see :func:`table_with_plugins`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from dynamo_triton.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from dynamo_triton.plugins import Plugins

__all__ = [
    "DType",
    "DTypeTable",
    "default_table",
    "kserve_to_numpy",
    "kserve_to_triton",
    "numpy_to_kserve",
    "table_with_plugins",
    "triton_to_kserve",
]


@dataclass(frozen=True)
class DType:
    """One tensor datatype under all its names.

    :param numpy: the numpy dtype (``object`` for BYTES).
    :param itemsize: bytes per element in raw form; 0 for BYTES (variable length).
    :param contents_field: the ``InferTensorContents`` field carrying it in typed form,
        None when KServe has none (FP16, BF16: raw only).
    """

    kserve: str
    numpy: np.dtype[Any]
    triton: str
    dynamo: str
    itemsize: int
    contents_field: str | None


def _row(kserve: str, numpy: Any, dynamo: str, contents: str | None, triton: str | None = None) -> DType:
    dtype = np.dtype(numpy)
    return DType(
        kserve, dtype, triton or f"TYPE_{kserve}", dynamo, 0 if dtype == np.object_ else dtype.itemsize, contents
    )


_CORE = (
    _row("BOOL", np.bool_, "Bool", "bool_contents"),
    _row("UINT8", np.uint8, "Uint8", "uint_contents"),
    _row("UINT16", np.uint16, "Uint16", "uint_contents"),
    _row("UINT32", np.uint32, "Uint32", "uint_contents"),
    _row("UINT64", np.uint64, "Uint64", "uint64_contents"),
    _row("INT8", np.int8, "Int8", "int_contents"),
    _row("INT16", np.int16, "Int16", "int_contents"),
    _row("INT32", np.int32, "Int32", "int_contents"),
    _row("INT64", np.int64, "Int64", "int64_contents"),
    _row("FP16", np.float16, "Float16", None),
    _row("FP32", np.float32, "Float32", "fp32_contents"),
    _row("FP64", np.float64, "Float64", "fp64_contents"),
    _row("BF16", ml_dtypes.bfloat16, "BFloat16", None),
    _row("BYTES", np.object_, "Bytes", "bytes_contents", triton="TYPE_STRING"),
)


class DTypeTable:
    """Lookups in every direction; unknown names raise UnknownNameError listing the known ones."""

    def __init__(self, rows: Iterable[DType] = ()):
        self._rows: list[DType] = []
        self._kserve: dict[str, DType] = {}
        self._triton: dict[str, DType] = {}
        self._dynamo: dict[str, DType] = {}
        self._numpy: dict[np.dtype[Any], DType] = {}
        for row in rows:
            self.add(row)

    def add(self, row: DType) -> None:
        """Add a row; a KServe, Triton or Dynamo name already in the table is a ConfigError."""
        for index, name in ((self._kserve, row.kserve), (self._triton, row.triton), (self._dynamo, row.dynamo)):
            if name in index:
                raise ConfigError(f"dtype name {name!r} is already in the dtype table (as {index[name].kserve})")
        self._rows.append(row)
        self._kserve[row.kserve] = row
        self._triton[row.triton] = row
        self._dynamo[row.dynamo] = row
        self._numpy.setdefault(row.numpy, row)

    def names(self) -> list[str]:
        """KServe names, in table order."""
        return [row.kserve for row in self._rows]

    def rows(self) -> list[DType]:
        return list(self._rows)

    def by_kserve(self, name: str) -> DType:
        try:
            return self._kserve[name]
        except KeyError:
            raise UnknownNameError("dtype", name, self._kserve) from None

    def by_triton(self, name: str) -> DType:
        """Accepts ``TYPE_FP32`` or ``FP32`` (and ``STRING`` for BYTES)."""
        key = name if name.startswith("TYPE_") else f"TYPE_{name}"
        try:
            return self._triton[key]
        except KeyError:
            raise UnknownNameError("Triton dtype", name, self._triton) from None

    def by_dynamo(self, name: str) -> DType:
        try:
            return self._dynamo[name]
        except KeyError:
            raise UnknownNameError("Dynamo dtype", name, self._dynamo) from None

    def by_numpy(self, dtype: Any) -> DType:
        """numpy bytes_/str_ arrays map to BYTES, like object arrays."""
        resolved = np.dtype(dtype)
        if resolved.kind in ("S", "U", "O"):
            return self._kserve["BYTES"]
        try:
            return self._numpy[resolved]
        except KeyError:
            raise UnknownNameError("numpy dtype", str(resolved), (str(d) for d in self._numpy)) from None


@functools.cache
def default_table() -> DTypeTable:
    """The core table (no plugin rows); shared, do not ``add`` to it."""
    return DTypeTable(_CORE)


def table_with_plugins(plugins: Plugins) -> DTypeTable:
    """The core table plus every DType registered through ``dyntriton_register_dtypes``."""
    table = DTypeTable(_CORE)
    for row in plugins.dtypes():
        table.add(row)
    return table


def kserve_to_numpy(name: str) -> np.dtype[Any]:
    return default_table().by_kserve(name).numpy


def numpy_to_kserve(dtype: Any) -> str:
    return default_table().by_numpy(dtype).kserve


def triton_to_kserve(name: str) -> str:
    return default_table().by_triton(name).kserve


def kserve_to_triton(name: str) -> str:
    return default_table().by_kserve(name).triton
