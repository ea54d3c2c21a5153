"""What ``serve`` waits for before it says it is serving, and the summary it prints then.

``serve`` shares its store with anything else in the namespace (another ``serve``, workers
started by hand), so it counts only *its own* workers: instances whose card says they run
on this host in one of its processes (the worker children, or this process for the
in-process worker). Each card lists every model its worker registers (``worker.models``),
so a worker is complete once the table holds one card of it per listed model.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from dynamo_triton.frontend import ServedModel
from dynamo_triton.runtime.discovery import Instance

__all__ = ["Ownership", "print_summary", "served_by_own"]


@dataclass(frozen=True)
class Ownership:
    """Which instances belong to this ``serve``: workers running in ``pids`` on ``host``."""

    pids: frozenset[int]
    host: str = field(default_factory=socket.gethostname)

    def owns(self, instance: Instance) -> bool:
        worker = instance.card.worker
        return worker.get("host") == self.host and worker.get("pid") in self.pids


def served_by_own(
    instances: Iterable[Instance], owner: Ownership, workers: int, wanted: Collection[str]
) -> dict[str, int] | None:
    """Own instances per model once start-up is complete, else None.

    Complete means: ``workers`` distinct own instances registered, each with a card for every model
    its cards announce, and every model of ``wanted`` among them (empty ``wanted``: the workers'
    own lists are the whole repository).
    """
    seen: dict[str, set[str]] = {}
    announced: dict[str, set[str]] = {}
    for instance in instances:
        if not owner.owns(instance):
            continue
        seen.setdefault(instance.instance_id, set()).add(instance.card.model)
        models = instance.card.worker.get("models")
        announced[instance.instance_id] = set(models) if isinstance(models, list) else {instance.card.model}
    if len(seen) < workers or any(not announced[key] <= seen[key] for key in seen):
        return None
    counts: dict[str, int] = {}
    for models in seen.values():
        for model in models:
            counts[model] = counts.get(model, 0) + 1
    return counts if set(wanted) <= set(counts) else None


def _tensor(spec: object) -> str:
    return f"{spec.name} {spec.datatype}[{','.join(str(d) for d in spec.shape)}]"  # type: ignore[attr-defined]


#: Below this console width inputs and outputs share one column (one tensor a line).
WIDE = 110


def print_summary(models: list[ServedModel], own: dict[str, int], footer: str, console: Console | None = None) -> None:
    """The ``dyntriton is serving`` table (only ``own`` models, with other instances noted) and ``footer``.

    Model names never wrap; tensors are one a line and wrap only inside very long names, so every
    name a user must type stays whole at 80 columns.
    """
    console = console or Console(stderr=True)
    wide = console.width >= WIDE
    table = Table(title="dyntriton is serving", show_header=True)
    table.add_column("model", no_wrap=True)
    table.add_column("version")
    table.add_column("instances")
    table.add_column("decoupled")
    for column in ("inputs", "outputs") if wide else ("inputs → outputs",):
        table.add_column(column, overflow="fold")
    for model in sorted(models, key=lambda m: m.name):
        if model.name not in own:
            continue
        others = model.instances - own[model.name]
        count = str(own[model.name]) + (f" (+{others} other)" if others > 0 else "")
        inputs = [_tensor(t) for t in model.metadata.inputs]
        outputs = [_tensor(t) for t in model.metadata.outputs]
        row = [model.name, model.version, count, "yes" if model.decoupled else "no"]
        if wide:
            row += ["\n".join(inputs), "\n".join(outputs)]
        else:
            row.append("\n".join([*(f"→ {t}" for t in inputs), *(f"← {t}" for t in outputs)]))
        table.add_row(*row)
    console.print(table)
    console.print(footer, soft_wrap=True)  # one line: the terminal wraps it, copy-paste keeps it whole
