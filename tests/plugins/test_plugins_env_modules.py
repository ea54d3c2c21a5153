"""DYNTRITON_PLUGINS loads modules by name; DYNTRITON_TRACE_PLUGINS sees every registry hook call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dynamo_triton import hookimpl
from dynamo_triton.errors import PluginError
from dynamo_triton.plugins import make_plugin_manager

FP8_MODULE = """
    import ml_dtypes
    from dynamo_triton import hookimpl
    from dynamo_triton.dtypes import DType


    @hookimpl
    def dyntriton_register_dtypes(register):
        register("FP8E4M3", DType("FP8E4M3", ml_dtypes.float8_e4m3fn, "TYPE_UINT8", "Float8E4M3", 1, None,
                                  carrier="UINT8"))
"""


def write_module(folder: Path, name: str, source: str) -> Path:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


def dyntriton(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_a_module_named_in_the_knob_is_a_plugin_whose_dtypes_join_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(write_module(tmp_path, "knob_fp8", FP8_MODULE)))
    plugins = make_plugin_manager(env={"DYNTRITON_PLUGINS": " knob_fp8 ,knob_fp8"})
    record = plugins.record("knob_fp8")
    assert (record.status, record.source, record.module) == ("ok", "DYNTRITON_PLUGINS", "knob_fp8")
    assert record.provides == [("dtype", "FP8E4M3")]
    assert plugins.dtype_table().by_kserve("FP8E4M3").carrier == "UINT8"
    assert plugins.get("kv-store", "mem").provider == "kv-mem", "entry points still load"


def test_the_knob_is_ignored_when_a_test_asks_for_no_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(write_module(tmp_path, "knob_fp8", FP8_MODULE)))
    plugins = make_plugin_manager(entry_points=False, env={"DYNTRITON_PLUGINS": "knob_fp8"})
    assert plugins.records == [] and "FP8E4M3" not in plugins.dtype_table().names()


def test_broken_knob_modules_are_reported_like_broken_entry_points(tmp_path: Path) -> None:
    write_module(tmp_path, "knob_broken", "import dyntriton_missing_dependency\n")
    env = {"PYTHONPATH": str(tmp_path), "DYNTRITON_PLUGINS": "knob_broken,knob_typo,dyntriton_kv_mem"}
    listed = dyntriton("plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    broken, typo, twice = records["knob_broken"], records["knob_typo"], records["dyntriton_kv_mem"]
    assert broken["status"] == "error" and broken["source"] == "DYNTRITON_PLUGINS"
    assert (
        "Error importing plugin 'knob_broken'" in broken["error"] and "dyntriton_missing_dependency" in broken["error"]
    )
    assert broken["hint"] == "pip install dyntriton_missing_dependency (or remove 'knob_broken' from DYNTRITON_PLUGINS)"
    assert typo["status"] == "error" and "check the module name 'knob_typo'" in typo["hint"]
    assert "PYTHONPATH" in typo["hint"]
    assert twice["status"] == "error" and "already loaded as plugin 'kv-mem'" in twice["error"]
    assert records["kv-mem"]["status"] == "ok"
    assert dyntriton("store", "--store-kv", "mem", "ls", env=env).returncode == 0, "nothing else breaks"

    table = dyntriton("plugins", "list", env={**env, "COLUMNS": "300"})
    assert "(DYNTRITON_PLUGINS)" in table.stdout

    strict = dyntriton("plugins", "list", env={**env, "DYNTRITON_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "knob_broken" in strict.stderr

    disabled = dyntriton("plugins", "list", "--json", env={**env, "DYNTRITON_DISABLE_PLUGINS": "knob_broken"})
    assert {r["name"]: r["status"] for r in json.loads(disabled.stdout)}["knob_broken"] == "disabled"


def test_strict_mode_raises_for_a_broken_knob_module_in_process() -> None:
    with pytest.raises(PluginError, match="Error importing plugin 'knob_absent'") as info:
        make_plugin_manager(env={"DYNTRITON_PLUGINS": "knob_absent", "DYNTRITON_STRICT_PLUGINS": "1"})
    assert "DYNTRITON_PLUGINS" in (info.value.hint or "")


class Dtypes:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        pass


class Stores:
    @hookimpl
    def dyntriton_register_kv_stores(self, register: object) -> None:
        register("traced", object)  # type: ignore[operator]


def test_tracing_sees_each_registry_hook_call_with_its_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    plugins = make_plugin_manager(
        entry_points=False, plugins=[("alpha", Dtypes()), ("beta", Stores())], env={"DYNTRITON_TRACE_PLUGINS": "1"}
    )
    err = capsys.readouterr().err
    assert "[dyntriton plugins]   dyntriton_register_dtypes [hook]" in err
    assert "register: <Register dtype for plugin 'alpha'>" in err
    assert "register: <Register kv-store for plugin 'beta'>" in err
    assert err.count("finish dyntriton_register_") == 2, "one call per plugin and hook it implements"
    assert plugins.get("kv-store", "traced").provider == "beta", "names stay attributed to their provider"


def test_without_the_knob_nothing_is_traced(capsys: pytest.CaptureFixture[str]) -> None:
    make_plugin_manager(entry_points=False, plugins=[("alpha", Dtypes())], env={})
    assert capsys.readouterr().err == ""
