"""Plugin discovery: load the ``dyntriton`` entry points one by one and build the registry.

``make_plugin_manager()`` returns a fresh :class:`Plugins` facade (there is no
global manager). Each entry point is loaded on its own, so one plugin that fails
to import becomes a :class:`PluginRecord` with its error and a fix hint instead
of breaking unrelated commands. Shipped plugins load through the very same
entry-point group as third-party ones.

Registry hooks are called through pluggy one plugin at a time (a subset hook
caller per plugin), so each registered name is attributed to its provider and
pluggy's tracing sees every call.

Operator knobs (environment):

- ``DYNTRITON_PLUGINS=module[,module]``: also import these modules by name and register
  them as plugins (named by their module), like pytest's ``PYTEST_PLUGINS``: a plugin
  without a distribution, e.g. one on ``PYTHONPATH``. Child processes inherit it.
- ``DYNTRITON_DISABLE_PLUGINS=a,b``: skip these plugins.
- ``DYNTRITON_LOAD_PLUGINS=a,b``: load only these (an allow-list).
- ``DYNTRITON_STRICT_PLUGINS=1``: a broken or conflicting plugin is fatal.
- ``DYNTRITON_TRACE_PLUGINS=1``: print every hook call (pluggy tracing) to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from typing import TYPE_CHECKING, Any

import pluggy

from dynamo_triton import hookspecs
from dynamo_triton.errors import ConfigError, PluginError
from dynamo_triton.registry import Provided, Register, Registry

if TYPE_CHECKING:
    from dynamo_triton.dtypes import DTypeTable

__all__ = ["HOOK_KINDS", "PluginRecord", "Plugins", "import_optional", "make_plugin_manager"]

#: Registry hook name -> the kind of thing it registers.
HOOK_KINDS = {
    "dyntriton_register_kv_stores": "kv-store",
    "dyntriton_register_transports": "transport",
    "dyntriton_register_dtypes": "dtype",
    "dyntriton_register_backends": "backend",
    "dyntriton_register_frontends": "frontend",
    "dyntriton_register_routers": "router",
    "dyntriton_register_commands": "command",
}

OWN_DISTRIBUTION = "dynamo-triton"

#: ``PluginRecord.source`` of plugins named in DYNTRITON_PLUGINS.
ENV_SOURCE = "DYNTRITON_PLUGINS"


@dataclass
class PluginRecord:
    """What is known about one plugin, loaded or not.

    :param status: ``ok``, ``error`` (failed to import or register), ``disabled``
        (by DYNTRITON_DISABLE_PLUGINS / DYNTRITON_LOAD_PLUGINS) or ``conflict``.
    :param provides: ``(kind, name)`` pairs the plugin registered.
    :param source: how it was found: ``entry-point``, ``DYNTRITON_PLUGINS`` or ``explicit``
        (passed to :func:`make_plugin_manager` by code).
    """

    name: str
    distribution: str = ""
    version: str = ""
    module: str = ""
    status: str = "ok"
    error: str | None = None
    hint: str | None = None
    provides: list[tuple[str, str]] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    source: str = "entry-point"

    @property
    def builtin(self) -> bool:
        """True for the plugins shipped in the dynamo-triton distribution."""
        return self.distribution == OWN_DISTRIBUTION

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by ``dyntriton plugins list --json``)."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "status": self.status,
            "error": self.error,
            "hint": self.hint,
            "provides": [f"{kind}: {name}" for kind, name in self.provides],
            "hooks": self.hooks,
            "source": self.source,
        }


def _names_from_env(value: str | None) -> set[str] | None:
    if value is None or not value.strip():
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _install_hint(dist: md.Distribution | None, missing: str | None, plugin: str) -> str:
    """Suggest the pip command that brings a missing module, from the distribution's extras."""
    disable = f"or disable it with DYNTRITON_DISABLE_PLUGINS={plugin}"
    if missing is None:
        return f"reinstall the plugin's distribution, {disable}"
    top = _normalize(missing.split(".")[0])
    if dist is not None:
        for requirement in dist.requires or []:
            match = re.match(r"\s*([A-Za-z0-9_.\-]+).*extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
            if match and _normalize(match.group(1)) in {top, f"{top}-python", f"nvidia-{top}"}:
                return f"pip install '{dist.metadata['Name']}[{match.group(2)}]' ({disable})"
    return f"pip install {missing.split('.')[0]} ({disable})"


def import_optional(module: str, *, extra: str, purpose: str, distribution: str = OWN_DISTRIBUTION) -> Any:
    """Import ``module`` for a plugin factory, or raise PluginError with the pip command to fix it.

    :param extra: the extra of ``distribution`` that brings the module, e.g. ``"etcd"``.
    :param purpose: what needs it, e.g. ``"the etcd KV store"``.
    :param distribution: whose extra it is; third-party plugins pass their own distribution name
        (the default, dynamo-triton, is right only for the plugins we ship).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(
            f"{purpose} needs the Python package providing {module!r}, which failed to import: {exc}",
            hint=f"pip install '{distribution}[{extra}]'",
        ) from exc


class Plugins:
    """The plugin manager facade the core talks to (never ``pm.hook`` directly)."""

    def __init__(self, pm: pluggy.PluginManager, records: list[PluginRecord], registry: Registry):
        self.pm, self.records, self.registry = pm, records, registry
        self._dtype_table: DTypeTable | None = None

    def record(self, name: str) -> PluginRecord:
        """The record of plugin ``name``."""
        for record in self.records:
            if record.name == name:
                return record
        raise KeyError(name)

    def names(self, kind: str) -> list[str]:
        """Names registered for ``kind`` (``kv-store``, ``transport``, ...)."""
        return self.registry.names(kind)

    def get(self, kind: str, name: str) -> Provided:
        """The registered item; unknown names raise UnknownNameError listing known ones.

        When the name is unknown but a broken plugin might have provided it, the
        error's hint names that plugin and its fix.
        """
        return self.registry.get(kind, name, hint=self._broken_hint())

    def _broken_hint(self) -> str | None:
        broken = [r for r in self.records if r.status == "error"]
        if not broken:
            return None
        return "; ".join(f"plugin {r.name!r} failed to load: {r.error} -> {r.hint}" for r in broken)

    def settings_class(self, kind: str, name: str) -> type | None:
        """The settings class ``name`` registered for ``kind``, or None."""
        return self.get(kind, name).settings

    def settings_classes(self, kind: str) -> list[type]:
        """The settings classes of every plugin of ``kind`` (the options a command using that kind shows)."""
        return [item.settings for item in self.registry.items(kind) if item.settings is not None]

    def has_trait(self, kind: str, name: str, trait: str) -> bool:
        """True when ``name`` was registered for ``kind`` with ``trait`` (e.g. ``process-local``)."""
        return trait in self.get(kind, name).traits

    def names_with_trait(self, kind: str, trait: str) -> list[str]:
        """Names of ``kind`` registered with ``trait``, sorted (e.g. the ``default`` frontends)."""
        return [item.name for item in self.registry.items(kind) if trait in item.traits]

    def build_settings(self, kind: str, name: str, values: Mapping[str, Any], /, **overrides: Any) -> Any:
        """The settings of ``name`` from click's ``values`` (see :func:`dynamo_triton.settings.build`), or None
        when it registered no settings class."""
        cls = self.settings_class(kind, name)
        if cls is None:
            return None
        from dynamo_triton.settings import build

        return build(cls, values, **overrides)

    def _typed(self, item: Provided, options: Mapping[str, Any]) -> Any:
        """``item``'s settings class from keyword ``options`` (field names); an unknown one is a ConfigError."""
        import dataclasses

        assert item.settings is not None
        known = {f.name for f in dataclasses.fields(item.settings) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"{item.kind} {item.name!r} has no setting {', '.join(unknown)}",
                hint=f"its settings ({item.settings.__qualname__}): {', '.join(sorted(known))}",
            )
        return item.settings(**options)

    def kv_store(self, name: str, settings: Any = None, **options: Any) -> Any:
        """Build the KV store ``name`` from its ``settings`` object, or from keyword ``options`` naming its
        settings' fields (``kv_store("file", root="/tmp/kv")``).

        A store registered without a settings class gets ``StoreSettings(options=options)``.
        """
        from dynamo_triton.kv import StoreSettings

        item = self.get("kv-store", name)
        if item.settings is None:
            return item.obj(StoreSettings(options=options))
        if settings is None:
            settings = self._typed(item, options)
        elif options:
            settings = dataclasses_replace(settings, **options)
        return item.obj(settings)

    def transport(self, name: str, settings: Any = None) -> Any:
        """Build the transport ``name``; ``settings`` (a TransportSettings, or the plugin's own class extending
        it) reach a ``factory(settings)`` as the plugin's settings class (its own fields defaulted when
        ``settings`` is a plain TransportSettings).

        A factory written ``factory()`` (the original form) is called without them, unless they
        ask for TLS or a token, which it cannot provide: then ConfigError.
        """
        from dynamo_triton.transport import TransportSettings

        item = self.get("transport", name)
        factory = item.obj
        if item.settings is not None:
            from dynamo_triton.settings import promote

            return factory(promote(item.settings, settings or TransportSettings()))
        if _takes_an_argument(factory):
            return factory(settings or TransportSettings())
        if settings is not None and settings.secured:
            raise ConfigError(
                f"transport {name!r} takes no settings, so it cannot use TLS or a token",
                hint="use --transport tcp, or drop --transport-tls-*/--transport-token",
            )
        return factory()

    def backend(self, name: str, settings: Any) -> Any:
        """Build the backend ``name`` with ``settings`` (a BackendSettings, or the plugin's own class)."""
        item = self.get("backend", name)
        if item.settings is not None:
            from dynamo_triton.settings import promote

            settings = promote(item.settings, settings)
        return item.obj(settings)

    def frontend(self, name: str, settings: Any, service: Any) -> Any:
        """Build the frontend ``name`` serving ``service``; ``settings`` as for :meth:`backend`."""
        item = self.get("frontend", name)
        if item.settings is not None:
            from dynamo_triton.settings import promote

            settings = promote(item.settings, settings)
        return item.obj(settings, service)

    def router(self, name: str, settings: Any = None) -> Any:
        """A fresh router ``name`` (one per frontend process); ``settings`` default to its class's defaults."""
        item = self.get("router", name)
        if settings is None and item.settings is not None:
            settings = item.settings()
        return item.obj(settings)

    def dtypes(self) -> list[Any]:
        """Every DType registered by plugins (the core table is in dynamo_triton.dtypes)."""
        return [item.obj for item in self.registry.items("dtype")]

    def dtype_table(self) -> DTypeTable:
        """The dtype table of this process: core rows plus plugin rows, built once and then shared.

        Validation, the codecs, the worker and ``dyntriton infer`` take this table; do not ``add`` to it.

        :raises PluginConflictError, ConfigError: a plugin's dtype is invalid or clashes (see
            :func:`dynamo_triton.dtypes.table_with_plugins`); raised again on every call.
        """
        if self._dtype_table is None:
            from dynamo_triton.dtypes import table_with_plugins

            self._dtype_table = table_with_plugins(self)
        return self._dtype_table

    def commands(self) -> list[Provided]:
        """CLI commands registered by plugins (their loaders are not called)."""
        return self.registry.items("command")


def _takes_an_argument(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)


def _entry_points() -> list[md.EntryPoint]:
    return sorted(md.entry_points(group=hookspecs.PROJECT_NAME), key=lambda ep: ep.name)


def _register_all(pm: pluggy.PluginManager, records: dict[str, PluginRecord], registry: Registry) -> None:
    """Call every registry hook plugin by plugin so each name is attributed to its provider.

    Each call goes through pluggy (a subset hook caller holding only that plugin's
    implementation), so DYNTRITON_TRACE_PLUGINS and other hook monitors see it.
    """
    everyone = pm.get_plugins()
    for hook_name, kind in HOOK_KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            record = records[impl.plugin_name]
            if record.status != "ok":
                continue
            register: Register[Any] = Register(registry, kind, impl.plugin_name)
            only = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in everyone if p is not impl.plugin])
            try:
                only(register=register)
            except Exception as exc:  # a plugin's bug must not break the others
                record.status = "error"
                record.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                record.hint = (
                    "report it to the plugin's authors, or disable it with "
                    f"DYNTRITON_DISABLE_PLUGINS={impl.plugin_name}"
                )
                continue
            if hook_name not in record.hooks:
                record.hooks.append(hook_name)
            record.provides.extend((kind, name) for name in register.registered)
    _check_dtypes(records, registry)
    for conflict in registry.conflicts:
        for provider in conflict.providers:
            if provider in records and records[provider].status == "ok":
                records[provider].status = "conflict"
                records[provider].error = str(conflict)


def _env_modules(value: str | None) -> list[str]:
    """Module names from DYNTRITON_PLUGINS, in the order given, each once."""
    names = [part.strip() for part in (value or "").split(",") if part.strip()]
    return list(dict.fromkeys(names))


def _env_hint(module: str, missing: str | None) -> str:
    """The fix for a DYNTRITON_PLUGINS module that failed to import."""
    remove = f"or remove {module!r} from DYNTRITON_PLUGINS"
    if missing is None:
        return f"fix the error in module {module!r} ({remove})"
    if module == missing or module.startswith(f"{missing}."):
        return f"check the module name {module!r} and that its folder is on PYTHONPATH ({remove})"
    return f"pip install {missing.split('.')[0]} ({remove})"


def _register_plugin(pm: pluggy.PluginManager, record: PluginRecord, plugin: object) -> None:
    """Register ``plugin``; one object loaded twice (an entry point also in DYNTRITON_PLUGINS) is an error."""
    if pm.is_registered(plugin):
        raise PluginError(
            f"plugin {record.name!r}: module {record.module!r} is already loaded as plugin {pm.get_name(plugin)!r}",
            hint=f"remove {record.module!r} from DYNTRITON_PLUGINS",
        )
    pm.register(plugin, name=record.name)


def _check_dtypes(records: dict[str, PluginRecord], registry: Registry) -> None:
    """Mark a plugin whose DType cannot join the core table as broken, so ``plugins list`` shows why.

    Its rows stay registered: building the table (``Plugins.dtype_table()``) still fails loudly.
    numpy is imported only when some plugin registered a dtype.
    """
    items = registry.items("dtype")
    if not items:
        return
    from dynamo_triton.dtypes import add_plugin_row, core_table_copy

    for item in items:
        record = records.get(item.provider)
        try:
            add_plugin_row(core_table_copy(), item)
        except ConfigError as exc:
            if record is not None and record.status == "ok":
                record.status, record.error, record.hint = "error", exc.message, exc.hint


def make_plugin_manager(
    *,
    entry_points: bool = True,
    plugins: Iterable[tuple[str, object]] = (),
    env: Mapping[str, str] | None = None,
) -> Plugins:
    """Make a fresh plugin manager and registry.

    :param entry_points: load the ``dyntriton`` entry-point group and the modules named in
        DYNTRITON_PLUGINS (False in tests that want only the ``plugins`` they pass).
    :param plugins: extra ``(name, plugin_object)`` pairs to register (modules or objects
        with ``@hookimpl`` functions).
    :param env: environment to read the DYNTRITON_* knobs from (default ``os.environ``).
    :raises PluginError: only under DYNTRITON_STRICT_PLUGINS, for the first broken plugin.
    """
    env = os.environ if env is None else env
    disabled = _names_from_env(env.get("DYNTRITON_DISABLE_PLUGINS")) or set()
    allowed = _names_from_env(env.get("DYNTRITON_LOAD_PLUGINS"))
    strict = _is_true(env.get("DYNTRITON_STRICT_PLUGINS"))

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    if _is_true(env.get("DYNTRITON_TRACE_PLUGINS")):
        pm.trace.root.setwriter(lambda message: sys.stderr.write(f"[dyntriton plugins] {message}"))
        pm.enable_tracing()

    records: dict[str, PluginRecord] = {}

    def skipped(name: str) -> bool:
        return name in disabled or (allowed is not None and name not in allowed)

    def claim(record: PluginRecord) -> bool:
        """Add ``record``; False when the plugin is not to be loaded (name taken, or disabled)."""
        if record.name in records:
            taken = records[record.name]
            record.status = "conflict"
            record.error = (
                f"plugin name {record.name!r} is used by {taken.distribution or taken.source!r} "
                f"and {record.distribution or record.source!r}"
            )
            records[f"{record.name} ({record.distribution or record.source})"] = record
            return False
        records[record.name] = record
        if skipped(record.name):
            record.status = "disabled"
            return False
        return True

    def failed(record: PluginRecord, exc: Exception, hint: str) -> None:
        record.status = "error"
        if isinstance(exc, PluginError):
            record.error, record.hint = exc.message, exc.hint or hint
        else:
            record.error = f"Error importing plugin {record.name!r}: {type(exc).__name__}: {exc}"
            record.hint = hint
        if strict:
            raise PluginError(record.error, hint=record.hint) from exc

    for ep in _entry_points() if entry_points else []:
        dist = ep.dist
        record = PluginRecord(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist is not None else "",
            version=dist.version if dist is not None else "",
            module=ep.value,
        )
        if not claim(record):
            continue
        try:
            _register_plugin(pm, record, ep.load())
        except Exception as exc:
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            failed(record, exc, _install_hint(dist, missing, ep.name))

    for module in _env_modules(env.get("DYNTRITON_PLUGINS")) if entry_points else []:
        record = PluginRecord(name=module, module=module, source=ENV_SOURCE)
        if not claim(record):
            continue
        try:
            _register_plugin(pm, record, importlib.import_module(module))
        except Exception as exc:
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            failed(record, exc, _env_hint(module, missing))

    for name, plugin in plugins:
        records[name] = PluginRecord(
            name=name, module=getattr(plugin, "__name__", type(plugin).__name__), source="explicit"
        )
        if skipped(name):
            records[name].status = "disabled"
            continue
        pm.register(plugin, name=name)

    registry = Registry()
    _register_all(pm, records, registry)
    if strict:
        for record in records.values():
            if record.status in {"error", "conflict"}:
                raise PluginError(record.error or f"plugin {record.name!r} is broken", hint=record.hint)
    return Plugins(pm, list(records.values()), registry)
