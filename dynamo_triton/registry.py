"""Name -> (object, provider) tables filled by the registry hooks.

The registry remembers which plugin provided each name, so an unknown name can
list the known ones and a name offered twice can name both plugins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dynamo_triton.errors import PluginConflictError, UnknownNameError

if TYPE_CHECKING:  # named in the string forward references of the register aliases below
    from collections.abc import Callable  # noqa: F401

    import click  # noqa: F401

    from dynamo_triton.backend import BackendFactory  # noqa: F401
    from dynamo_triton.dtypes import DType  # noqa: F401
    from dynamo_triton.frontend import FrontendFactory  # noqa: F401
    from dynamo_triton.kv import KVStoreFactory  # noqa: F401
    from dynamo_triton.runtime.routing import RouterFactory  # noqa: F401
    from dynamo_triton.transport import TransportFactory  # noqa: F401

__all__ = [
    "KINDS",
    "BackendRegister",
    "CommandRegister",
    "DTypeRegister",
    "FrontendRegister",
    "KVStoreRegister",
    "Provided",
    "Register",
    "Registry",
    "RouterRegister",
    "TransportRegister",
]

#: Kinds of things plugins provide, as shown by ``dyntriton plugins list``.
KINDS = ("kv-store", "transport", "dtype", "backend", "frontend", "router", "command")

#: What one kind's register accepts: the factory protocol of that kind (checked by mypy).
F = TypeVar("F")


@dataclass(frozen=True)
class Provided:
    """One registered name.

    :param obj: the factory (or DType, or command loader) the plugin registered.
    :param provider: the plugin's name (its entry-point name).
    :param settings: the frozen dataclass of the plugin's settings (see :mod:`dynamo_triton.settings`),
        whose fields become CLI options; its instance is what the factory receives. None: no settings.
    :param traits: what the core may rely on without knowing the name, e.g. ``process-local`` (a store
        only this process sees: serve then runs its worker in-process), ``in-process`` (a transport
        without sockets), ``default`` (a frontend started when ``--frontend`` is not given).
    """

    kind: str
    name: str
    obj: Any
    provider: str
    summary: str = ""
    settings: type | None = None
    traits: frozenset[str] = frozenset()


class Registry:
    """Every registered name by kind, with conflicts kept for a clear error on use."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Provided]] = {kind: {} for kind in KINDS}
        self.conflicts: list[PluginConflictError] = []

    def add(self, item: Provided) -> None:
        """Record ``item``; a second provider of the same name is recorded as a conflict."""
        table = self._entries.setdefault(item.kind, {})
        existing = table.get(item.name)
        if existing is not None and existing.provider != item.provider:
            self.conflicts.append(PluginConflictError(item.kind, item.name, existing.provider, item.provider))
            return
        table[item.name] = item

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(self._entries.get(kind, {}))

    def items(self, kind: str) -> list[Provided]:
        """Registered items of ``kind``, sorted by name."""
        table = self._entries.get(kind, {})
        return [table[name] for name in sorted(table)]

    def __iter__(self) -> Iterator[Provided]:
        for kind in self._entries:
            yield from self.items(kind)

    def get(self, kind: str, name: str, *, hint: str | None = None) -> Provided:
        """The item registered as ``name``; raises a conflict or UnknownNameError listing known names."""
        for conflict in self.conflicts:
            if conflict.kind == kind and conflict.name == name:
                raise conflict
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, self.names(kind), hint=hint) from None


class Register(Generic[F]):
    """The callable handed to every ``dyntriton_register_*`` hook, typed by the kind's factory.

    ``register(name, factory, summary="", settings=None, traits=())`` records ``factory`` under
    ``name`` for this hook's kind, attributed to the plugin whose hook is running. A plugin annotates
    its hook's argument with the kind's alias (``KVStoreRegister``, ``FrontendRegister``...) so mypy
    checks its factory against the kind's protocol.
    """

    def __init__(self, registry: Registry, kind: str, provider: str):
        self._registry, self.kind, self.provider = registry, kind, provider
        self.registered: list[str] = []

    def __repr__(self) -> str:
        # pluggy's tracer prints hook arguments: this names the plugin whose hook is running.
        return f"<Register {self.kind} for plugin {self.provider!r}>"

    def __call__(
        self,
        name: str,
        obj: F,
        *,
        summary: str = "",
        settings: type | None = None,
        traits: tuple[str, ...] | frozenset[str] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if settings is not None:
            from dynamo_triton.settings import declared_options

            declared_options(settings)  # a TypeError now, naming the plugin, rather than at --help
        self._registry.add(Provided(self.kind, name, obj, self.provider, summary, settings, frozenset(traits)))
        self.registered.append(name)


#: The register each hook receives, by kind: annotate a hook's argument with one of these.
KVStoreRegister = Register["KVStoreFactory"]
TransportRegister = Register["TransportFactory"]
BackendRegister = Register["BackendFactory"]
FrontendRegister = Register["FrontendFactory"]
RouterRegister = Register["RouterFactory"]
DTypeRegister = Register["DType"]
CommandRegister = Register["Callable[[], click.Command]"]
