"""Merge KServe ``ModelStatisticsResponse``s from several workers into one, and keep them monotonic.

Counters and durations add up; ``last_inference`` takes the latest; batch
statistics merge by batch size; map fields (e.g. ``response_stats``) by key.
:class:`StatisticsLedger` keeps each instance's last report so totals never go
down when a worker leaves.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2

__all__ = ["StatisticsLedger", "merge_statistics"]

_MAX_FIELDS = {"last_inference"}
_KEY_FIELDS = {"batch_stats": "batch_size"}


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 6.32 deprecates ``label`` in favour of ``is_repeated``; we support 6.31 too.
    is_repeated = getattr(fd, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else fd.label == fd.LABEL_REPEATED


def _add_into(target: Message, source: Message) -> None:
    """target += source, field by field (see module docstring)."""
    for fd, value in source.ListFields():
        name = fd.name
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target_map = getattr(target, name)
            for key, item in value.items():
                if isinstance(item, Message):
                    _add_into(target_map[key], item)
                else:
                    target_map[key] += item
        elif _is_repeated(fd):
            key_field = _KEY_FIELDS.get(name)
            target_list = getattr(target, name)
            for item in value:
                match = None
                if key_field is not None:
                    match = next((t for t in target_list if getattr(t, key_field) == getattr(item, key_field)), None)
                if match is None:
                    target_list.add().CopyFrom(item)
                else:
                    _add_into(match, item)
        elif fd.message_type is not None:
            _add_into(getattr(target, name), value)
        elif fd.type in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_BOOL, fd.TYPE_ENUM):
            setattr(target, name, value)
        elif name in _MAX_FIELDS:
            setattr(target, name, max(getattr(target, name), value))
        elif name in _KEY_FIELDS.values():
            setattr(target, name, value)
        else:
            setattr(target, name, getattr(target, name) + value)


def merge_statistics(
    responses: Iterable[service_pb2.ModelStatisticsResponse], *, keep: set[str] | None = None
) -> service_pb2.ModelStatisticsResponse:
    """One response whose per-(model, version) entries sum those of ``responses``.

    :param keep: if given, only models with these names are kept.
    """
    merged: dict[tuple[str, str], service_pb2.ModelStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            if keep is not None and stats.name not in keep:
                continue
            key = (stats.name, stats.version)
            if key not in merged:
                merged[key] = service_pb2.ModelStatistics(name=stats.name, version=stats.version)
            _add_into(merged[key], stats)
    result = service_pb2.ModelStatisticsResponse()
    for key in sorted(merged):
        result.model_stats.add().CopyFrom(merged[key])
    return result


class StatisticsLedger:
    """The last statistics each worker instance reported, per model: totals that never go down.

    A worker that leaves (deregistered, or its lease expired) stops answering, but what it
    served stays counted: its last report is kept and added to the live instances' ones, so
    ``ModelStatistics`` and the metrics made from it are monotonic, as Triton's own are.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], service_pb2.ModelStatistics] = {}

    def record(self, instance_id: str, response: service_pb2.ModelStatisticsResponse) -> None:
        """Remember ``response``, the current statistics of instance ``instance_id`` (for some or all models)."""
        for stats in response.model_stats:
            self._last[(instance_id, stats.name, stats.version)] = stats

    def total(self, *, keep: set[str] | None = None) -> service_pb2.ModelStatisticsResponse:
        """Every instance's last report, departed ones included, merged (see :func:`merge_statistics`)."""
        combined = service_pb2.ModelStatisticsResponse()
        for stats in self._last.values():
            combined.model_stats.append(stats)
        return merge_statistics([combined], keep=keep)
