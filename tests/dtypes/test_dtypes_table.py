"""The dtype table: every name in every direction, plugins adding rows, clear errors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from dynamo_triton import hookimpl
from dynamo_triton.dtypes import (
    DType,
    DTypeTable,
    default_table,
    kserve_to_numpy,
    kserve_to_triton,
    numpy_to_kserve,
    table_with_plugins,
    triton_to_kserve,
)
from dynamo_triton.errors import ConfigError, PluginConflictError, UnknownNameError
from dynamo_triton.plugins import make_plugin_manager

KSERVE = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
KSERVE += ["FP16", "FP32", "FP64", "BF16", "BYTES"]


def test_table_has_every_kserve_datatype() -> None:
    assert default_table().names() == KSERVE


@pytest.mark.parametrize(
    ("kserve", "numpy", "triton", "dynamo"),
    [
        ("BOOL", np.bool_, "TYPE_BOOL", "Bool"),
        ("UINT16", np.uint16, "TYPE_UINT16", "Uint16"),
        ("INT64", np.int64, "TYPE_INT64", "Int64"),
        ("FP16", np.float16, "TYPE_FP16", "Float16"),
        ("BF16", ml_dtypes.bfloat16, "TYPE_BF16", "BFloat16"),
        ("BYTES", np.object_, "TYPE_STRING", "Bytes"),
    ],
)
def test_lookups_agree_in_every_direction(kserve: str, numpy: object, triton: str, dynamo: str) -> None:
    table = default_table()
    row = table.by_kserve(kserve)
    assert row.numpy == np.dtype(numpy)
    assert table.by_triton(triton) is row
    assert table.by_triton(triton.removeprefix("TYPE_")) is row
    assert table.by_dynamo(dynamo) is row
    assert table.by_numpy(numpy) is row


def test_text_arrays_map_to_bytes() -> None:
    assert default_table().by_numpy(np.array([b"a"]).dtype).kserve == "BYTES"
    assert default_table().by_numpy(np.array(["a"]).dtype).kserve == "BYTES"


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        default_table().by_kserve("FP8")
    assert "FP8" in str(info.value) and "BF16" in str(info.value) and "INT32" in str(info.value)
    with pytest.raises(UnknownNameError, match="TYPE_STRING"):
        default_table().by_triton("TYPE_COMPLEX")


class Float8Plugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", DType("FP8E4M3", np.dtype(ml_dtypes.float8_e4m3fn), "TYPE_FP8", "Float8", 1, None))  # type: ignore[operator]


class ClashingPlugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("INT32", DType("INT32", np.dtype(np.int32), "TYPE_INT32_ALT", "Int32Alt", 4, None))  # type: ignore[operator]


def test_plugins_add_dtypes_through_the_hook() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("fp8", Float8Plugin())])
    table = table_with_plugins(plugins)
    assert table.by_kserve("FP8E4M3").numpy == np.dtype(ml_dtypes.float8_e4m3fn)
    assert table.by_dynamo("Float8").triton == "TYPE_FP8"
    assert "FP8E4M3" not in default_table().names(), "the shared core table is never modified"


def test_a_plugin_redefining_a_core_dtype_is_an_error() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("clash", ClashingPlugin())])
    with pytest.raises(ConfigError, match=r"plugin 'clash'.*INT32"):
        table_with_plugins(plugins)


def test_a_fresh_table_rejects_duplicates() -> None:
    table = DTypeTable(default_table().rows())
    with pytest.raises(ConfigError):
        table.add(default_table().by_kserve("FP32"))


def test_module_level_conversions_use_the_core_table() -> None:
    assert kserve_to_numpy("FP32") == np.dtype(np.float32)
    assert numpy_to_kserve(np.uint64) == "UINT64"
    assert numpy_to_kserve(np.dtype(">i4")) == "INT32", "non-native byte order maps like native"
    assert triton_to_kserve("TYPE_STRING") == "BYTES" and triton_to_kserve("BF16") == "BF16"
    assert kserve_to_triton("BYTES") == "TYPE_STRING"


def test_every_unknown_lookup_lists_the_known_names() -> None:
    table = default_table()
    with pytest.raises(UnknownNameError, match="Float32"):
        table.by_dynamo("Float128")
    with pytest.raises(UnknownNameError, match="float32"):
        table.by_numpy(np.complex64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("X", np.float32, "TYPE_X", "X", 8, None), "itemsize 8"),
        (("X", np.object_, "TYPE_X", "X", 4, None), "itemsize 4"),
        (("X", np.float32, "TYPE_X", "X", 4, "float_contents"), "float_contents"),
        (("X", np.float32, "X", "X", 4, None), "TYPE_"),
    ],
)
def test_inconsistent_dtypes_are_rejected(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DType(*args)  # type: ignore[arg-type]


def test_dtype_accepts_a_scalar_type_for_numpy() -> None:
    assert DType("X", np.float32, "TYPE_X", "X", 4, None).numpy == np.dtype(np.float32)  # type: ignore[arg-type]


class OtherFloat8Plugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", DType("FP8E4M3", np.dtype(ml_dtypes.float8_e4m3fn), "TYPE_FP8B", "Float8B", 1, None))  # type: ignore[operator]


class MisnamedPlugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8", DType("FP8E5M2", np.dtype(ml_dtypes.float8_e5m2), "TYPE_FP8E5M2", "Float8E5M2", 1, None))  # type: ignore[operator]


def test_two_plugins_registering_one_dtype_name_both_named() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("fp8", Float8Plugin()), ("fp8b", OtherFloat8Plugin())])
    with pytest.raises(PluginConflictError, match=r"'fp8'.*'fp8b'"):
        table_with_plugins(plugins)


def test_a_dtype_registered_under_another_name_names_the_plugin() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("misnamed", MisnamedPlugin())])
    with pytest.raises(ConfigError, match=r"plugin 'misnamed'.*'FP8E5M2'.*'FP8'"):
        table_with_plugins(plugins)
