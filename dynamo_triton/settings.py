"""Typed, frozen settings declared once: each field says its CLI option, env var, default and help.

A plugin registers a frozen dataclass of settings next to its factory
(``register("etcd", factory, settings=EtcdOptions)``); each field that users may set
is declared with :func:`setting`::

    @dataclass(frozen=True)
    class EtcdOptions:
        __panel__: ClassVar[str] = "etcd store"
        endpoints: str = setting(
            "http://localhost:2379", "--etcd-endpoints", envvar="ETCD_ENDPOINTS", help="etcd client URLs."
        )

The core turns those fields into click options on every command that uses that kind of
plugin (:func:`click_options`), builds the selected plugin's settings once from click's
values (:func:`build`) and hands the object to the factory. Nobody reads ``os.environ``
for a setting: click does, through the option's ``envvar``. A child process gets the
same values through :func:`render_argv`, generically from this table (secrets through
their env var, never the command line).

Settings may extend the core's common settings of their kind (``TransportSettings``,
``FrontendSettings``, ``BackendSettings``): the common fields are declared there, once, and
appear once however many plugins inherit them. A field declared with the same option by two
classes (a shared mixin, e.g. the NATS connection) is one option; the same flag declared twice
differently is a :class:`~dynamo_triton.errors.ConfigError` naming both.

This module imports only click and the standard library: ``dyntriton --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from dynamo_triton.errors import ConfigError

__all__ = [
    "METADATA_KEY",
    "Declared",
    "OptionSpec",
    "build",
    "click_options",
    "declared_options",
    "panel_of",
    "promote",
    "render_argv",
    "setting",
]

#: Key of :class:`OptionSpec` in a dataclass field's ``metadata``.
METADATA_KEY = "dyntriton.option"


@dataclass(frozen=True)
class OptionSpec:
    """How one settings field reads as a CLI option.

    :param flags: the option's spellings, the first one canonical (``("--model", "--model-name")``).
    :param envvar: the environment variable(s) click reads when the option is not given.
    :param help: the one paragraph ``--help`` shows.
    :param type: a click type (default: from the field's default value: int, float, str, bool).
    :param secondary: for a boolean on/off pair, the "off" spelling (``--no-http-tls``).
    :param multiple: repeatable; the value is a tuple.
    :param secret: reaches child processes through ``envvar``, never their command line.
    :param hidden: not listed by ``--help`` (still accepted).
    :param show_default: show the default in ``--help``.
    :param callback: click callback validating or normalising the value.
    :param metavar: how ``--help`` names the value (default: click's, from the type).
    """

    flags: tuple[str, ...]
    envvar: str | tuple[str, ...] | None = None
    help: str = ""
    type: Any = None
    secondary: str | None = None
    multiple: bool = False
    secret: bool = False
    hidden: bool = False
    show_default: bool = True
    callback: Any = None
    metavar: str | None = None

    @property
    def param_name(self) -> str:
        """The click parameter name: the canonical flag in snake case (``--etcd-endpoints`` -> ``etcd_endpoints``)."""
        return self.flags[0].lstrip("-").replace("-", "_")


def setting(
    default: Any,
    *flags: str,
    envvar: str | tuple[str, ...] | None = None,
    help: str = "",
    type: Any = None,
    secondary: str | None = None,
    multiple: bool = False,
    secret: bool = False,
    hidden: bool = False,
    show_default: bool = True,
    callback: Any = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field with its option: ``setting(8787, "--grpc-port", envvar="DYN_GRPC_PORT", help=...)``.

    The default is the one and only place the value is defined (``--help`` shows it).
    """
    if not flags:
        raise ValueError("a setting needs at least one flag, e.g. '--grpc-port'")
    spec = OptionSpec(
        flags=tuple(flags),
        envvar=envvar,
        help=help,
        type=type,
        secondary=secondary,
        multiple=multiple,
        secret=secret,
        hidden=hidden,
        show_default=show_default,
        callback=callback,
        metavar=metavar,
    )
    return field(default=default, metadata={METADATA_KEY: spec})


@dataclass(frozen=True)
class Declared:
    """One option as declared by a settings class: the field, its spec, and the panel it shows in."""

    field_name: str
    spec: OptionSpec
    default: Any
    panel: str
    owner: type


def panel_of(cls: type) -> str:
    """The ``--help`` panel of fields declared by ``cls``: its ``__panel__``, else its name."""
    return str(cls.__dict__.get("__panel__") or cls.__name__)


def _owner(cls: type, name: str) -> type:
    """The class of ``cls``'s MRO that declares field ``name`` last (the one whose spec wins)."""
    for klass in cls.__mro__:
        if name in inspect.get_annotations(klass):
            return klass
    return cls


def declared_options(cls: type) -> list[Declared]:
    """The option-bearing fields of settings class ``cls`` (inherited ones included), in field order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"settings must be a dataclass, got {cls!r}")
    found = []
    for item in dataclasses.fields(cls):
        spec = item.metadata.get(METADATA_KEY)
        if spec is None:
            continue
        default = item.default if item.default is not dataclasses.MISSING else None
        owner = _owner(cls, item.name)
        found.append(Declared(item.name, spec, default, panel_of(owner), owner))
    return found


def _click_type(spec: OptionSpec, default: Any) -> Any:
    if spec.type is not None:
        return spec.type
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return None


def _make_option(declared: Declared, *, override: bool) -> click.Option:
    spec = declared.spec
    names = list(spec.flags)
    flag_pair = spec.secondary is not None
    if flag_pair:
        names = [f"{spec.flags[0]}/{spec.secondary}"]
    kwargs: dict[str, Any] = {"help": spec.help, "hidden": spec.hidden, "callback": spec.callback}
    if spec.metavar is not None:
        kwargs["metavar"] = spec.metavar
    if override:  # a sub-command's copy: no default and no env var, so "not given" is None
        kwargs["default"] = None
        if spec.multiple:
            kwargs["default"] = ()
    else:
        kwargs["default"] = declared.default
        kwargs["envvar"] = spec.envvar
        kwargs["show_envvar"] = spec.envvar is not None
        kwargs["show_default"] = spec.show_default and declared.default not in (None, ())
    if spec.multiple:
        kwargs["multiple"] = True
    if flag_pair or (isinstance(declared.default, bool) and spec.type is None):
        kwargs["is_flag"] = True
        if not flag_pair:
            kwargs["default"] = None if override else bool(declared.default)
    else:
        click_type = _click_type(spec, declared.default)
        if click_type is not None:
            kwargs["type"] = click_type
    option = click.Option([*names, spec.param_name], **kwargs)
    option.dyntriton_panel = declared.panel  # type: ignore[attr-defined]
    option.dyntriton_spec = spec  # type: ignore[attr-defined]
    return option


def _merged(classes: Iterable[type]) -> Iterator[Declared]:
    """Every option of ``classes`` once; the same flag declared two different ways is a ConfigError."""
    seen: dict[str, Declared] = {}
    for cls in classes:
        for declared in declared_options(cls):
            first = seen.get(declared.spec.flags[0])
            if first is None:
                seen[declared.spec.flags[0]] = declared
                yield declared
            elif first.spec != declared.spec or first.default != declared.default:
                raise ConfigError(
                    f"option {declared.spec.flags[0]} is declared by {first.owner.__qualname__} "
                    f"({first.owner.__module__}) and differently by {declared.owner.__qualname__} "
                    f"({declared.owner.__module__})",
                    hint="two plugins cannot declare one option two ways: rename one, or share the declaring class",
                )


def click_options(classes: Iterable[type], *, override: bool = False) -> list[click.Option]:
    """Click options for every field of ``classes`` (each option once), tagged with their panel.

    :param override: make the sub-command flavour: no default, no env var (the value is None
        unless given on that sub-command's command line).
    """
    return [_make_option(declared, override=override) for declared in _merged(classes)]


def build(cls: type[Any], values: Mapping[str, Any], /, **overrides: Any) -> Any:
    """``cls`` from click's ``values`` (by parameter name); ``overrides`` win, absent values keep defaults.

    A value of None (an option not given, without a default) leaves the field's default.
    """
    kwargs: dict[str, Any] = {}
    for declared in declared_options(cls):
        value = values.get(declared.spec.param_name)
        if value is not None:
            kwargs[declared.field_name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


def promote(cls: type[Any], base: Any, /, **overrides: Any) -> Any:
    """``base`` (an instance of one of ``cls``'s bases) as a ``cls``: its fields kept, the others defaulted.

    So ``plugins.transport("tcp", TransportSettings(heartbeat=0.5))`` reaches the tcp factory as
    its own settings class with that heartbeat.
    """
    if isinstance(base, cls) and not overrides:
        return base
    names = {item.name for item in dataclasses.fields(cls) if item.init}
    kwargs = {item.name: getattr(base, item.name) for item in dataclasses.fields(base) if item.name in names}
    kwargs.update(overrides)
    return cls(**kwargs)


def render_argv(
    params: Iterable[click.Parameter], values: Mapping[str, Any], *, env: dict[str, str] | None = None
) -> list[str]:
    """The command line that gives a child command the option ``values`` (by parameter name).

    Generic over the option table: every option of ``params`` with a value in ``values`` is
    rendered, whatever it is, including values equal to the default (the child then sees exactly
    this process's values, even if its environment differs). Options declared ``secret`` go into
    ``env`` under their env var instead (never on a command line other users can read).
    """
    argv: list[str] = []
    for param in params:
        if not isinstance(param, click.Option) or param.name not in values:
            continue
        value = values[param.name]
        spec = getattr(param, "dyntriton_spec", None)
        flag = max(param.opts, key=len)
        if spec is not None and spec.secret:
            if value and env is not None and spec.envvar:
                variable = spec.envvar if isinstance(spec.envvar, str) else spec.envvar[0]
                env[variable] = str(value)
            continue
        if param.is_flag:
            if value:
                argv.append(flag)
            elif param.secondary_opts:  # an on/off pair defaulting to on: "off" must be said
                argv.append(max(param.secondary_opts, key=len))
        elif param.multiple:
            for item in value or ():
                argv += [flag, _text(param, item)]
        elif value is not None:
            argv += [flag, _text(param, value)]
    return argv


def _text(param: click.Parameter, value: Any) -> str:
    """A value as its option reads it back (a type may format itself: ``PortRange``'s ``9000-9010``)."""
    formatter = getattr(param.type, "format_value", None)
    return str(formatter(value)) if formatter is not None else str(value)
