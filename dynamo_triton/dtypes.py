"""The one dtype table: KServe datatype <-> numpy dtype <-> Triton ``TYPE_*`` <-> Dynamo name.

Every conversion of a type name in dyntriton goes through this table. Plugins
add rows through the ``dyntriton_register_dtypes`` hook (see :func:`table_with_plugins`);
processes get that table once from ``Plugins.dtype_table()`` and hand it to validation,
the codecs, the worker and ``dyntriton infer``.

A plugin row may name a *carrier*: the core datatype whose Triton type carries its bytes to
a backend that knows only core types (``FP8E4M3`` carried as ``UINT8``: a model declares
``TYPE_UINT8``; the worker relabels the tensor ``UINT8`` before the backend sees it, without
touching its bytes). Carrier rules, enforced by :meth:`DTypeTable.add`:

- the carrier is a core row of the table, itself not carried, with the same itemsize;
- the row's Triton name is the carrier's (lookups by Triton name return the carrier's row);
- its ``contents_field`` is None or the carrier's (typed contents must mean the same bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from dynamo_triton.errors import ConfigError, PluginConflictError, UnknownNameError

if TYPE_CHECKING:
    from dynamo_triton.plugins import Plugins
    from dynamo_triton.registry import Provided

__all__ = [
    "DType",
    "DTypeTable",
    "add_plugin_row",
    "core_table_copy",
    "default_table",
    "kserve_to_numpy",
    "kserve_to_triton",
    "numpy_to_kserve",
    "table_with_plugins",
    "triton_to_kserve",
]

#: The typed ``InferTensorContents`` fields of KServe v2 (a DType names one of them, or None).
CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


@dataclass(frozen=True)
class DType:
    """One tensor datatype under all its names.

    :param numpy: the numpy dtype (``object`` for BYTES).
    :param itemsize: bytes per element in raw form; 0 for BYTES (variable length).
    :param contents_field: the ``InferTensorContents`` field carrying it in typed form,
        None when KServe has none (FP16, BF16: raw only).
    :param carrier: for a plugin datatype Triton does not know, the KServe name of the core
        datatype that carries its bytes to the backend (``"UINT8"`` for an 8-bit float); then
        ``triton`` is the carrier's Triton name. None for datatypes the backend knows itself.
    """

    kserve: str
    numpy: np.dtype[Any]
    triton: str
    dynamo: str
    itemsize: int
    contents_field: str | None
    carrier: str | None = None

    def __post_init__(self) -> None:
        # Plugins may pass a scalar type (np.float32); the table keys on np.dtype objects.
        object.__setattr__(self, "numpy", np.dtype(self.numpy))
        variable = self.numpy == np.dtype(object)
        expected = 0 if variable else self.numpy.itemsize
        if self.itemsize != expected:
            raise ConfigError(
                f"dtype {self.kserve}: itemsize {self.itemsize} does not match numpy dtype {self.numpy} "
                f"(expected {expected}; 0 means variable-length, only for object dtypes)"
            )
        if self.contents_field is not None and self.contents_field not in CONTENTS_FIELDS:
            raise ConfigError(
                f"dtype {self.kserve}: contents_field {self.contents_field!r} is not an InferTensorContents field; "
                f"expected None or one of {', '.join(CONTENTS_FIELDS)}"
            )
        if not self.triton.startswith("TYPE_"):
            raise ConfigError(f"dtype {self.kserve}: Triton name {self.triton!r} must start with 'TYPE_'")
        if self.carrier == self.kserve:
            raise ConfigError(f"dtype {self.kserve} cannot be its own carrier; name a core datatype such as UINT8")


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
        """Add a row; a KServe, Triton or Dynamo name already in the table is a ConfigError.

        The one exception: a row with a ``carrier`` shares its carrier's Triton name (and
        ``by_triton`` keeps returning the carrier). A carrier that is unknown, itself carried,
        of another itemsize or with another typed-contents field is a ConfigError.
        """
        indexes = [(self._kserve, row.kserve), (self._dynamo, row.dynamo)]
        if row.carrier is None:
            indexes.append((self._triton, row.triton))
        else:
            self._check_carrier(row)
        for index, name in indexes:
            if name in index:
                raise ConfigError(f"dtype name {name!r} is already in the dtype table (as {index[name].kserve})")
        self._rows.append(row)
        self._kserve[row.kserve] = row
        if row.carrier is None:
            self._triton[row.triton] = row
        self._dynamo[row.dynamo] = row
        self._numpy.setdefault(row.numpy, row)

    def _check_carrier(self, row: DType) -> None:
        carrier = self._kserve.get(row.carrier or "")
        if carrier is None or carrier.carrier is not None:
            core = [r.kserve for r in self._rows if r.carrier is None]
            raise ConfigError(
                f"dtype {row.kserve}: carrier {row.carrier!r} is not a core datatype of the table; "
                f"expected one of {', '.join(core)}"
            )
        wrong = []
        if row.itemsize != carrier.itemsize:
            wrong.append(f"itemsize {row.itemsize} (the carrier's is {carrier.itemsize})")
        if row.triton != carrier.triton:
            wrong.append(f"Triton name {row.triton!r} (a carried datatype uses the carrier's, {carrier.triton!r})")
        if row.contents_field not in (None, carrier.contents_field):
            wrong.append(f"contents_field {row.contents_field!r} (None or the carrier's, {carrier.contents_field!r})")
        if wrong:
            raise ConfigError(f"dtype {row.kserve} carried by {carrier.kserve} has " + "; ".join(wrong))

    def carrier_of(self, name: str) -> DType:
        """The row the backend sees for KServe datatype ``name``: its carrier's, or its own."""
        row = self.by_kserve(name)
        return self._kserve[row.carrier] if row.carrier is not None else row

    def carried(self) -> dict[str, str]:
        """KServe name -> carrier's KServe name, for every carried row (empty for the core table)."""
        return {row.kserve: row.carrier for row in self._rows if row.carrier is not None}

    def accepts(self, given: str, declared: str) -> bool:
        """True when a tensor of datatype ``given`` may feed a model input declared ``declared``.

        Both are KServe names; ``given`` must be in the table. Equal names, or ``given`` carried by
        ``declared`` (same itemsize, enforced by :meth:`add`).
        """
        return given == declared or self.by_kserve(given).carrier == declared

    def names(self) -> list[str]:
        """KServe names, in table order."""
        return [row.kserve for row in self._rows]

    def rows(self) -> list[DType]:
        """Every row, in table order."""
        return list(self._rows)

    def by_kserve(self, name: str) -> DType:
        """The row of KServe datatype ``name`` (``"FP32"``)."""
        try:
            return self._kserve[name]
        except KeyError:
            raise UnknownNameError("datatype", name, self._kserve) from None

    def by_triton(self, name: str) -> DType:
        """Accepts ``TYPE_FP32`` or ``FP32`` (and ``STRING`` for BYTES)."""
        key = name if name.startswith("TYPE_") else f"TYPE_{name}"
        try:
            return self._triton[key]
        except KeyError:
            raise UnknownNameError("Triton dtype", name, self._triton) from None

    def by_dynamo(self, name: str) -> DType:
        """The row of Dynamo datatype ``name`` (``"Float32"``)."""
        try:
            return self._dynamo[name]
        except KeyError:
            raise UnknownNameError("Dynamo dtype", name, self._dynamo) from None

    def by_numpy(self, dtype: Any) -> DType:
        """The row of a numpy dtype (or anything ``np.dtype`` accepts).

        bytes_ / str_ / object dtypes map to BYTES; non-native byte orders map like native ones
        (``array_to_raw`` converts them).
        """
        resolved = np.dtype(dtype)
        if resolved.kind in ("S", "U", "O") and "BYTES" in self._kserve:
            return self._kserve["BYTES"]
        if not resolved.isnative:
            resolved = resolved.newbyteorder("=")
        try:
            return self._numpy[resolved]
        except KeyError:
            raise UnknownNameError("numpy dtype", str(resolved), (str(d) for d in self._numpy)) from None


@functools.cache
def default_table() -> DTypeTable:
    """The core table (no plugin rows); shared, do not ``add`` to it."""
    return DTypeTable(_CORE)


def table_with_plugins(plugins: Plugins) -> DTypeTable:
    """A new table: the core rows plus every DType registered through ``dyntriton_register_dtypes``.

    :raises PluginConflictError: two plugins registered the same dtype name.
    :raises ConfigError: a plugin registered something that is not a DType, under a name other
        than its ``kserve`` name, a name the table already has, or a carrier breaking the carrier
        rules (module docstring); the message names the plugin.
    """
    for conflict in plugins.registry.conflicts:
        if isinstance(conflict, PluginConflictError) and conflict.kind == "dtype":
            raise conflict
    table = DTypeTable(_CORE)
    for item in plugins.registry.items("dtype"):
        add_plugin_row(table, item)
    return table


def add_plugin_row(table: DTypeTable, item: Provided) -> None:
    """Add the DType a plugin registered (``item``) to ``table``.

    :raises ConfigError: naming ``item.provider``, for any of the errors :func:`table_with_plugins` lists.
    """
    row = item.obj
    if not isinstance(row, DType):
        raise ConfigError(
            f"plugin {item.provider!r} registered dtype {item.name!r} as {type(row).__name__}, expected a "
            "dynamo_triton.dtypes.DType"
        )
    if row.kserve != item.name:
        raise ConfigError(
            f"plugin {item.provider!r} registered dtype {row.kserve!r} under the name {item.name!r}; "
            "register each DType under its kserve name"
        )
    try:
        table.add(row)
    except ConfigError as exc:
        raise ConfigError(
            f"plugin {item.provider!r}: {exc}",
            hint="pick KServe and Dynamo names no other dtype uses; a datatype Triton does not know takes "
            "carrier=<core datatype> and that datatype's Triton name (docs/plugins.md)",
        ) from None


def core_table_copy() -> DTypeTable:
    """A new table holding only the core rows (safe to ``add`` to)."""
    return DTypeTable(_CORE)


def kserve_to_numpy(name: str) -> np.dtype[Any]:
    """numpy dtype of KServe datatype ``name`` (core table)."""
    return default_table().by_kserve(name).numpy


def numpy_to_kserve(dtype: Any) -> str:
    """KServe datatype of a numpy dtype (core table)."""
    return default_table().by_numpy(dtype).kserve


def triton_to_kserve(type_name: str) -> str:
    """KServe datatype of a Triton ``TYPE_*`` name, prefix optional (core table)."""
    return default_table().by_triton(type_name).kserve


def kserve_to_triton(name: str) -> str:
    """Triton ``TYPE_*`` name of KServe datatype ``name`` (core table)."""
    return default_table().by_kserve(name).triton
