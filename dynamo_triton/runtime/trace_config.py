"""``--trace-config`` as Triton 2.51 spells it, read into the start settings of tracing.

``<key>=<value>`` (``mode``, ``level``, ``rate``, ``count``) or ``<mode>,<key>=<value>``
(``opentelemetry,url=...``, ``opentelemetry,bsp_*=...``); ``triton,file=...`` is refused: dyntriton
writes no Triton trace file. Used by ``frontend``, ``worker`` and ``serve`` (``runtime/tracing.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamo_triton.errors import ConfigError

__all__ = ["TraceConfig"]

_LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")


@dataclass(frozen=True)
class TraceConfig:
    """``--trace-config`` as Triton 2.51 spells it: ``<key>=<value>`` (``mode``, ``level``, ``rate``,
    ``count``) or ``<mode>,<key>=<value>`` (``opentelemetry,url=...``, ``opentelemetry,bsp_*=...``).

    :param mode: ``triton`` (default; no trace file is written, so nothing is traced) or ``opentelemetry``.
    :param level: Triton's trace level (``OFF``, or ``TIMESTAMPS`` and/or ``TENSORS``).
    :param rate: one request in ``rate`` is traced. :param count: traces left (-1: no limit).
    :param opentelemetry: the ``opentelemetry,<key>=<value>`` settings (``url`` of the OTLP/HTTP endpoint).
    """

    mode: str = "triton"
    level: tuple[str, ...] = ("OFF",)
    rate: int = 1000
    count: int = -1
    opentelemetry: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Sequence[str]) -> TraceConfig:
        """From the ``--trace-config`` values; a bad one raises :class:`ConfigError` naming it."""
        mode, levels, rate, count, otel = "triton", [], 1000, -1, {}
        for item in items:
            scope, _, setting = item.rpartition(",")
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise ConfigError(
                    f"--trace-config {item!r}: expected <setting>=<value> or <mode>,<setting>=<value>",
                    hint="e.g. --trace-config mode=opentelemetry --trace-config opentelemetry,url=http://host:4318/v1/traces",
                )
            if scope == "opentelemetry":
                otel[key] = value
            elif scope in ("", "triton"):
                if key == "mode":
                    if value not in ("triton", "opentelemetry"):
                        raise ConfigError(f"--trace-config mode={value}: the modes are triton and opentelemetry")
                    mode = value
                elif key == "level":
                    if value.upper() not in _LEVELS:
                        raise ConfigError(f"--trace-config level={value}: the levels are {', '.join(_LEVELS)}")
                    levels.append(value.upper())
                elif key in ("rate", "count"):
                    try:
                        number = int(value)
                    except ValueError:
                        raise ConfigError(f"--trace-config {key}={value}: expected an integer") from None
                    if (key == "rate" and number < 0) or (key == "count" and number < -1):
                        raise ConfigError(f"--trace-config {key}={value}: out of range")
                    rate, count = (number, count) if key == "rate" else (rate, number)
                elif scope == "triton" or key in ("file", "log-frequency"):
                    raise ConfigError(
                        f"--trace-config {item}: dyntriton writes no Triton trace file",
                        hint="trace with --trace-config mode=opentelemetry and an OTLP endpoint",
                    )
                else:
                    raise ConfigError(f"--trace-config {item}: unknown setting {key!r}")
            else:
                raise ConfigError(f"--trace-config {item}: unknown trace mode {scope!r}")
        level = ("OFF",) if not levels or "OFF" in levels else tuple(n for n in _LEVELS[1:] if n in levels)
        if mode == "opentelemetry":
            otel.setdefault("url", "http://localhost:4318/v1/traces")
        return cls(mode, level, rate, count, otel)

    @property
    def url(self) -> str:
        """The OTLP/HTTP endpoint spans are exported to ("" when not in opentelemetry mode)."""
        return self.opentelemetry.get("url", "") if self.mode == "opentelemetry" else ""

    def as_start(self) -> dict[str, Any]:
        """The start layer of :class:`~dynamo_triton.runtime.server_settings.TraceSettings`."""
        from dynamo_triton.runtime.server_settings import OPENTELEMETRY_DEFAULTS, TRACE_DEFAULTS

        start = dict(TRACE_DEFAULTS)
        start.update(trace_level=self.level, trace_rate=self.rate, trace_count=self.count, trace_mode=self.mode)
        if self.mode == "opentelemetry":
            start.update({key: self.opentelemetry.get(key, value) for key, value in OPENTELEMETRY_DEFAULTS.items()})
        return start

    def as_args(self) -> list[str]:
        """The ``--trace-config`` values that give this config back (handed to child processes)."""
        args = [f"mode={self.mode}", f"rate={self.rate}", f"count={self.count}"]
        args += [f"level={level}" for level in self.level]
        args += [f"opentelemetry,{key}={value}" for key, value in self.opentelemetry.items()]
        return args
