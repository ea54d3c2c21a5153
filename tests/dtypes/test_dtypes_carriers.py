"""Carried plugin datatypes: the table's carrier rules, errors naming the plugin, codecs with the plugin table."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from dynamo_triton import hookimpl
from dynamo_triton.dtypes import DType, DTypeTable, default_table
from dynamo_triton.errors import ConfigError, InvalidRequestError, PluginError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.tensors import array_from_raw, array_to_raw, contents_to_raw, expected_byte_size

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


def fp8(**changes: object) -> DType:
    fields: dict[str, object] = {
        "kserve": "FP8E4M3",
        "numpy": FP8,
        "triton": "TYPE_UINT8",
        "dynamo": "Float8E4M3",
        "itemsize": 1,
        "contents_field": None,
        "carrier": "UINT8",
    }
    fields.update(changes)
    return DType(**fields)  # type: ignore[arg-type]


class Fp8Plugin:
    """Registers FP8E4M3 carried as UINT8, as docs/plugins.md shows."""

    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", fp8())  # type: ignore[operator]


class Uint8ImpostorPlugin:
    """Claims TYPE_UINT8 without saying it is carried: still a conflict."""

    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", fp8(carrier=None))  # type: ignore[operator]


class BadCarrierPlugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", fp8(carrier="FP16", triton="TYPE_FP16"))  # type: ignore[operator]


def plugin_table(*plugins: tuple[str, object]) -> DTypeTable:
    return make_plugin_manager(entry_points=False, plugins=plugins).dtype_table()


def test_a_carried_dtype_shares_its_carriers_triton_name_and_lookups_keep_the_core_row() -> None:
    table = plugin_table(("fp8", Fp8Plugin()))
    row = table.by_kserve("FP8E4M3")
    assert row.carrier == "UINT8" and row.numpy == FP8
    assert table.by_triton("TYPE_UINT8") is default_table().by_kserve("UINT8")
    assert table.by_numpy(FP8) is row
    assert table.by_dynamo("Float8E4M3") is row
    assert table.carrier_of("FP8E4M3").kserve == "UINT8" and table.carrier_of("INT32").kserve == "INT32"
    assert table.carried() == {"FP8E4M3": "UINT8"} and default_table().carried() == {}


def test_accepts_equal_names_and_carried_by_only() -> None:
    table = plugin_table(("fp8", Fp8Plugin()))
    assert table.accepts("FP8E4M3", "UINT8")
    assert table.accepts("UINT8", "UINT8")
    assert not table.accepts("FP8E4M3", "INT8"), "same itemsize is not enough: INT8 does not carry it"
    assert not table.accepts("UINT8", "FP8E4M3"), "carrying goes one way"


def test_the_plugin_manager_builds_its_table_once() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("fp8", Fp8Plugin())])
    assert plugins.dtype_table() is plugins.dtype_table()
    assert "FP8E4M3" not in default_table().names(), "the shared core table is never modified"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (fp8(carrier="FP128"), r"carrier 'FP128' is not a core datatype.*expected one of BOOL, UINT8"),
        (fp8(carrier="FP16", triton="TYPE_FP16"), r"itemsize 1 \(the carrier's is 2\)"),
        (fp8(triton="TYPE_INT8"), r"Triton name 'TYPE_INT8' \(a carried datatype uses the carrier's, 'TYPE_UINT8'\)"),
        (
            fp8(contents_field="int_contents"),
            r"contents_field 'int_contents' \(None or the carrier's, 'uint_contents'\)",
        ),
    ],
)
def test_carrier_rules_are_enforced_with_the_expectation(row: DType, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DTypeTable(default_table().rows()).add(row)


def test_a_carrier_cannot_itself_be_carried() -> None:
    table = DTypeTable(default_table().rows())
    table.add(fp8())
    with pytest.raises(ConfigError, match="carrier 'FP8E4M3' is not a core datatype"):
        table.add(fp8(kserve="FP8B", dynamo="Float8B", carrier="FP8E4M3"))


def test_a_dtype_cannot_carry_itself() -> None:
    with pytest.raises(ConfigError, match="cannot be its own carrier"):
        fp8(carrier="FP8E4M3")


def test_the_carriers_typed_field_is_allowed() -> None:
    table = DTypeTable(default_table().rows())
    table.add(fp8(kserve="U8ALIAS", numpy=np.uint8, dynamo="U8Alias", contents_field="uint_contents"))
    assert table.by_kserve("U8ALIAS").contents_field == "uint_contents"


def test_claiming_a_core_triton_name_without_a_carrier_is_an_error_naming_the_plugin() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("impostor", Uint8ImpostorPlugin())])
    with pytest.raises(ConfigError, match=r"plugin 'impostor'.*'TYPE_UINT8' is already in the dtype table") as info:
        plugins.dtype_table()
    assert "carrier=" in (info.value.hint or "")


def test_a_broken_carrier_is_an_error_naming_the_plugin_on_every_call() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("badcarrier", BadCarrierPlugin())])
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"plugin 'badcarrier'.*carried by FP16 has itemsize 1"):
            plugins.dtype_table()


def test_a_broken_dtype_plugin_shows_as_an_error_in_its_record_and_is_fatal_when_strict() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("badcarrier", BadCarrierPlugin())])
    record = plugins.record("badcarrier")
    assert record.status == "error" and record.error is not None
    assert record.error.startswith("plugin 'badcarrier': dtype FP8E4M3 carried by FP16 has itemsize 1")
    assert "carrier=" in (record.hint or "")
    with pytest.raises(PluginError, match="plugin 'badcarrier'"):
        make_plugin_manager(
            entry_points=False, plugins=[("badcarrier", BadCarrierPlugin())], env={"DYNTRITON_STRICT_PLUGINS": "1"}
        )
    assert make_plugin_manager(entry_points=False, plugins=[("fp8", Fp8Plugin())]).record("fp8").status == "ok"


def test_codecs_with_the_plugin_table_are_views_over_raw_bytes() -> None:
    table = plugin_table(("fp8", Fp8Plugin()))
    array = np.array([[0.5, -2.0, 448.0]], dtype=FP8)
    raw = array_to_raw(array, table=table)  # datatype found by the array's numpy dtype
    assert raw == array.view(np.uint8).tobytes()
    assert expected_byte_size("FP8E4M3", [1, 3], table=table) == 3
    back = array_from_raw(raw, "FP8E4M3", [1, 3], table=table)
    assert back.dtype == FP8 and back.tobytes() == raw
    assert not back.flags.owndata, "a view over the raw bytes, not a copy"
    carried = array_from_raw(raw, "UINT8", [1, 3], table=table)
    assert carried.view(FP8).tobytes() == raw, "the carrier's view holds the same bytes"


def test_codecs_without_the_plugin_table_name_the_known_datatypes() -> None:
    with pytest.raises(ConfigError, match=r"unknown datatype 'FP8E4M3'; available: .*UINT8"):
        array_from_raw(b"\0", "FP8E4M3", [1])


def test_a_carried_dtype_without_typed_contents_says_to_send_raw() -> None:
    table = plugin_table(("fp8", Fp8Plugin()))
    contents = service_pb2.InferTensorContents(uint_contents=[1, 2])
    with pytest.raises(InvalidRequestError, match="FP8E4M3 has no typed contents field") as info:
        contents_to_raw(contents, "FP8E4M3", table=table)
    assert "raw" in (info.value.hint or "")
