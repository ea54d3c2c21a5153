"""Name -> (object, provider) tables filled by the registry hooks.

The registry remembers which plugin provided each name, so an unknown name can
list the known ones and a name offered twice can name both plugins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dynamo_triton.errors import PluginConflictError, UnknownNameError

__all__ = ["KINDS", "Provided", "Register", "Registry"]

#: Kinds of things plugins provide, as shown by ``dyntriton plugins list``.
KINDS = ("kv-store", "transport", "dtype", "backend", "frontend", "command")


@dataclass(frozen=True)
class Provided:
    """One registered name.

    :param obj: the factory (or DType, or command loader) the plugin registered.
    :param provider: the plugin's name (its entry-point name).
    """

    kind: str
    name: str
    obj: Any
    provider: str
    summary: str = ""


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


class Register:
    """The callable handed to every ``dyntriton_register_*`` hook.

    ``register(name, obj, summary="")`` records ``obj`` under ``name`` for this
    hook's kind, attributed to the plugin whose hook is running.
    """

    def __init__(self, registry: Registry, kind: str, provider: str):
        self._registry, self.kind, self.provider = registry, kind, provider
        self.registered: list[str] = []

    def __repr__(self) -> str:
        # pluggy's tracer prints hook arguments: this names the plugin whose hook is running.
        return f"<Register {self.kind} for plugin {self.provider!r}>"

    def __call__(self, name: str, obj: Any, *, summary: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        self._registry.add(Provided(self.kind, name, obj, self.provider, summary))
        self.registered.append(name)
