"""The plugin system as users meet it: entry points, broken plugins, conflicts, knobs, the core/plugin line."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dynamo_triton import hookimpl
from dynamo_triton.errors import PluginConflictError, PluginError, UnknownNameError
from dynamo_triton.plugins import import_optional, make_plugin_manager

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {
    "kv-store": {"file", "mem", "etcd"},
    "transport": {"tcp", "inproc"},
    "frontend": {"kserve-grpc", "http"},
    "backend": {"triton"},
    "command": {"doctor"},
}


def dyntriton(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def fake_distribution(root: Path, name: str, module_source: str, *, extra_requires: str = "") -> Path:
    """A distribution as pip would leave it: a module plus a .dist-info with METADATA and entry points."""
    package = name.replace("-", "_")
    (root / f"{package}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{package}-1.0.dist-info"
    info.mkdir(parents=True)
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{extra_requires}"
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text(f"[dyntriton]\n{name.removeprefix('dyntriton-')} = {package}\n")
    return root


def test_shipped_plugins_load_through_the_entry_point_group() -> None:
    plugins = make_plugin_manager(env={})
    builtin = [record for record in plugins.records if record.builtin]
    assert builtin and all(record.status == "ok" for record in builtin), [r.as_dict() for r in builtin]
    for kind, names in SHIPPED.items():
        assert names <= set(plugins.names(kind)), kind
        for name in names:
            assert plugins.get(kind, name).provider in {r.name for r in builtin}


def test_without_entry_points_the_core_provides_nothing() -> None:
    plugins = make_plugin_manager(entry_points=False)
    assert all(plugins.names(kind) == [] for kind in SHIPPED)


def test_the_core_never_imports_a_plugin_package() -> None:
    """``dynamo_triton.testing`` included: its helpers reach plugins through the public API, as users' tests do."""
    offenders = []
    for path in (REPO / "dynamo_triton").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0].startswith("dyntriton_")]
    assert offenders == []


def test_plugins_list_json_shows_providers_and_status() -> None:
    result = dyntriton("plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    records = {record["name"]: record for record in json.loads(result.stdout)}
    assert "kv-store: etcd" in records["kv-etcd"]["provides"]
    assert records["kv-file"]["distribution"] == "dynamo-triton"
    assert records["backend-triton"]["hooks"] == ["dyntriton_register_backends", "dyntriton_register_commands"]
    table = dyntriton("plugins", "list")
    assert "kv-store: mem" in table.stdout and "dynamo-triton" in table.stdout


BROKEN = """
import dyntriton_missing_dependency  # not installed
"""


def test_a_broken_plugin_is_reported_with_a_fix_and_breaks_nothing_else(tmp_path: Path) -> None:
    requires = 'Provides-Extra: fancy\nRequires-Dist: dyntriton-missing-dependency>=1; extra == "fancy"\n'
    fake_distribution(tmp_path, "dyntriton-broken", BROKEN, extra_requires=requires)
    env = {"PYTHONPATH": str(tmp_path)}
    listed = dyntriton("plugins", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    record = next(r for r in json.loads(listed.stdout) if r["name"] == "broken")
    assert record["status"] == "error"
    assert "Error importing plugin 'broken'" in record["error"] and "dyntriton_missing_dependency" in record["error"]
    assert record["hint"].startswith("pip install 'dyntriton-broken[fancy]'")
    assert dyntriton("--help", env=env).returncode == 0
    assert dyntriton("store", "--store-kv", "mem", "ls", env=env).returncode == 0

    strict = dyntriton("plugins", "list", env={**env, "DYNTRITON_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "broken" in strict.stderr and "pip install" in strict.stderr

    disabled = dyntriton("plugins", "list", "--json", env={**env, "DYNTRITON_DISABLE_PLUGINS": "broken"})
    assert next(r for r in json.loads(disabled.stdout) if r["name"] == "broken")["status"] == "disabled"


def test_an_unknown_name_lists_known_ones_and_points_at_broken_plugins(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "dyntriton-broken", BROKEN)
    result = dyntriton("store", "--store-kv", "redis", "ls", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert "unknown kv-store 'redis'; available: etcd, file, mem" in result.stderr
    assert "plugin 'broken' failed to load" in result.stderr


def test_load_plugins_is_an_allow_list() -> None:
    plugins = make_plugin_manager(env={"DYNTRITON_LOAD_PLUGINS": "kv-mem"})
    assert plugins.names("kv-store") == ["mem"]
    assert plugins.record("kv-etcd").status == "disabled"


class FileImpostor:
    @hookimpl
    def dyntriton_register_kv_stores(self, register):
        register("file", lambda settings: None)


class Crashing:
    @hookimpl
    def dyntriton_register_transports(self, register):
        raise RuntimeError("boom")


def test_two_providers_of_one_name_is_an_error_naming_both() -> None:
    plugins = make_plugin_manager(plugins=[("impostor", FileImpostor())], env={})
    with pytest.raises(PluginConflictError) as info:
        plugins.kv_store("file")
    assert "'kv-file'" in str(info.value) and "'impostor'" in str(info.value)
    assert plugins.record("impostor").status == "conflict"
    assert plugins.kv_store("mem") is not None, "other names still work"


def test_a_plugin_whose_hook_raises_is_reported_and_others_work() -> None:
    plugins = make_plugin_manager(plugins=[("crashing", Crashing())], env={})
    record = plugins.record("crashing")
    assert record.status == "error" and "boom" in (record.error or "")
    assert "tcp" in plugins.names("transport")
    with pytest.raises(UnknownNameError):
        plugins.transport("crashing")


COMMAND_PLUGIN = """
from dynamo_triton import hookimpl

def load():
    raise ImportError("the command's module needs something missing")

@hookimpl
def dyntriton_register_commands(register):
    register("fancy", load, summary="A command that cannot load.")
"""


def test_a_plugin_command_that_fails_to_load_only_fails_itself(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "dyntriton-fancycmd", COMMAND_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    helped = dyntriton("--help", env=env)
    assert helped.returncode == 0 and "fancy" in helped.stdout and "A command that cannot load." in helped.stdout
    ran = dyntriton("fancy", env=env)
    assert ran.returncode != 0 and "failed to load" in ran.stderr and "needs something missing" in ran.stderr
    assert dyntriton("plugins", "list", env=env).returncode == 0


@pytest.mark.slow  # builds a wheel in a subprocess (a few seconds)
def test_the_wheel_holds_only_our_packages_and_the_entry_points(tmp_path: Path) -> None:
    import zipfile

    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("dynamo_triton-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {
        "dynamo_triton",
        *(
            f"dyntriton_{p}"
            for p in (
                "kv_file",
                "kv_mem",
                "kv_etcd",
                "kv_nats",
                "transport_tcp",
                "transport_inproc",
                "transport_nats",
                "frontend_kserve_grpc",
                "frontend_http",
                "backend_triton",
                "router_basic",
            )
        ),
    }
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[dyntriton]" in text and "kv-etcd = dyntriton_kv_etcd" in text


def test_import_optional_names_the_module_and_the_pip_command_of_the_right_distribution() -> None:
    with pytest.raises(PluginError) as shipped:
        import_optional("dyntriton_no_such_module", extra="etcd", purpose="the etcd KV store")
    assert "the etcd KV store" in str(shipped.value) and "dyntriton_no_such_module" in str(shipped.value)
    assert "pip install 'dynamo-triton[etcd]'" in str(shipped.value.hint)
    with pytest.raises(PluginError) as third_party:
        import_optional(
            "dyntriton_no_such_module", extra="redis", purpose="the redis KV store", distribution="dyntriton-kv-redis"
        )
    assert "pip install 'dyntriton-kv-redis[redis]'" in str(third_party.value.hint)
