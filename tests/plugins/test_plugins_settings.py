"""Plugins' settings: options declared once on a frozen dataclass, built once, handed to children generically."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import click
import pytest

from dynamo_triton import hookimpl
from dynamo_triton.cli.composition import child_argv, plugin_settings, with_plugin_options
from dynamo_triton.cli.main import core_command
from dynamo_triton.errors import ConfigError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.settings import build, click_options, render_argv, setting


@dataclass(frozen=True)
class Shared:
    __panel__ = "shared"
    server: str = setting("s://default", "--shared-server", envvar="DYN_TEST_SHARED", help="A shared option.")


@dataclass(frozen=True)
class One(Shared):
    __panel__ = "one"
    size: int = setting(3, "--one-size", help="An int.")
    on: bool = setting(True, "--one-on", secondary="--no-one-on", help="An on/off pair.")
    secret: str | None = setting(None, "--one-secret", envvar="DYN_TEST_SECRET", secret=True, help="A secret.")
    tags: tuple[str, ...] = setting((), "--one-tag", multiple=True, help="Repeatable.")


@dataclass(frozen=True)
class Two(Shared):
    __panel__ = "two"


@dataclass(frozen=True)
class Clash:
    server: str = setting("other", "--shared-server", help="The same flag, declared differently.")


def test_an_option_shared_through_a_class_shows_once_in_its_panel() -> None:
    options = click_options([One, Two])
    flags = [option.opts[0] for option in options]
    assert flags.count("--shared-server") == 1
    panels = {option.opts[0]: option.dyntriton_panel for option in options}  # type: ignore[attr-defined]
    assert panels["--shared-server"] == "shared" and panels["--one-size"] == "one"


def test_one_flag_declared_two_ways_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"--shared-server is declared by Shared .* and differently by Clash"):
        click_options([One, Clash])


def test_settings_are_built_once_from_click_values_with_defaults_and_overrides(monkeypatch) -> None:
    monkeypatch.setenv("DYN_TEST_SHARED", "s://from-env")

    @click.command()
    def command(**values: object) -> None:
        raise AssertionError("not run")

    command.params.extend(click_options([One]))
    ctx = command.make_context("command", ["--one-size", "7", "--no-one-on", "--one-tag", "a", "--one-tag", "b"])
    settings = build(One, ctx.params, secret="x")
    assert settings == One(server="s://from-env", size=7, on=False, secret="x", tags=("a", "b"))
    with pytest.raises(FrozenInstanceError):
        settings.size = 8  # type: ignore[misc]


def test_children_get_every_value_from_the_option_table_and_secrets_by_environment() -> None:
    options = click_options([One])
    env: dict[str, str] = {}
    values = {"shared_server": "s://x", "one_size": 5, "one_on": False, "one_secret": "pw", "one_tag": ("a", "b")}
    argv = render_argv(options, values, env=env)
    assert argv == ["--shared-server", "s://x", "--one-size", "5", "--no-one-on", "--one-tag", "a", "--one-tag", "b"]
    assert env == {"DYN_TEST_SECRET": "pw"}


class _Plugin:
    @hookimpl
    def dyntriton_register_kv_stores(self, register):  # type: ignore[no-untyped-def]
        register("demo", lambda settings: settings, settings=One, summary="a store returning its settings")


def test_a_plugins_options_join_the_commands_of_its_kind_and_reach_its_factory() -> None:
    plugins = make_plugin_manager(entry_points=False, plugins=[("demo", _Plugin())])
    store = core_command("store", plugins)
    assert "--one-size" in [option.opts[0] for option in store.params]
    assert "--one-size" in [option.opts[0] for option in store.commands["ls"].params], "the sub-command's override"
    ctx = store.make_context("store", ["--store-kv", "demo", "--one-size", "9", "ls"])
    settings = plugin_settings(plugins, "kv-store", "demo", ctx.params)
    assert plugins.kv_store("demo", settings).size == 9
    assert plugins.kv_store("demo", size=4) == One(size=4), "code passes field names"
    with pytest.raises(ConfigError, match="kv-store 'demo' has no setting colour"):
        plugins.kv_store("demo", colour="red")


def test_serve_gives_its_workers_the_plugins_options_without_a_list_to_keep_in_step() -> None:
    plugins = make_plugin_manager()
    serve = core_command("serve", plugins)
    args = ["--store-kv", "etcd", "--etcd-endpoints", "http://e:2379", "--triton-home", "/t", "--tcp-max-frame", "4096"]
    ctx = serve.make_context("serve", [*args, "--workers", "2", "--grpc-port", "1"])
    argv = child_argv(ctx, core_command("worker", plugins))
    for flag, value in zip(args[::2], args[1::2], strict=True):
        assert argv[argv.index(flag) + 1] == value
    assert "--workers" not in argv and "--grpc-port" not in argv, "only what a worker has"


def test_the_module_level_command_is_never_changed() -> None:
    from dynamo_triton.cli.serve_cmd import serve

    before = list(serve.params)
    with_plugin_options(serve, make_plugin_manager())
    assert serve.params == before
