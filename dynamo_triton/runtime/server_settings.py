"""Triton's logging and trace settings: the values, and the update rules of Triton 2.51's frontends.

``LogSettings`` (``LogSettings`` RPC, ``/v2/logging``) holds ``log_file``, ``log_info``,
``log_warning``, ``log_error``, ``log_verbose_level`` and ``log_format``. ``TraceSettings``
(``TraceSetting`` RPC, ``/v2[/models/{m}]/trace/setting``) holds a global layer and one
layer per model over Triton's defaults: a model's read falls back to the global value for
every field it does not set, and the global layer falls back to the defaults; an empty value
(gRPC) or ``null`` (REST) clears a field of its layer, as in Triton's ``TraceManager``. The trace
file cannot be set over the network (Triton's rule). In ``trace_mode`` ``triton`` (the default)
dyntriton writes no trace file, so, as Triton does for a server started without
``--trace-config triton,file=...``, a level other than ``OFF`` is refused ("trace file name is not
given"). Started with ``--trace-config mode=opentelemetry`` (the ``start`` settings), a level is
taken and requests are traced to the OTLP endpoint (``dynamo_triton.runtime.tracing``); the answers
then carry Triton's OpenTelemetry keys (``url``, ``bsp_*``) instead of the trace file's.

The update functions take the request as each protocol carries it and raise
:class:`~dynamo_triton.errors.DyntritonError` with Triton's message and status. One
difference: Triton applies the fields it read before a bad one; here a bad request changes
nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dynamo_triton.errors import DyntritonError, InvalidRequestError

__all__ = [
    "LOG_FORMATS",
    "OPENTELEMETRY_DEFAULTS",
    "TRACE_DEFAULTS",
    "LogSettings",
    "TraceSettings",
    "log_update_from_grpc",
    "log_update_from_json",
    "trace_update_from_grpc",
    "trace_update_from_json",
]

LOG_FORMATS = ("default", "ISO8601")
_LOG_FILE = "log file location can not be updated through network protocol"
_TRACE_FILE = "trace file location can not be updated through network protocol"


@dataclass(frozen=True)
class LogSettings:
    """Triton's log settings, fields in Triton's order (the REST answer's key order)."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LogSettings:
        body = json.loads(raw)
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in body.items() if key in known})


def log_update_from_grpc(current: LogSettings, settings: Mapping[str, Any]) -> LogSettings:
    """``current`` updated by a ``LogSettingsRequest.settings`` map (Triton's checks and messages)."""
    changes: dict[str, Any] = {}
    if "log_file" in settings:
        raise DyntritonError(_LOG_FILE, status="UNIMPLEMENTED")
    for name, kind, expected in (
        ("log_info", "bool_param", "boolean"),
        ("log_warning", "bool_param", "boolean"),
        ("log_error", "bool_param", "boolean"),
        ("log_verbose_level", "uint32_param", "int32"),
        ("log_format", "string_param", "string"),
    ):
        if name not in settings:
            continue
        value = settings[name]
        if value.WhichOneof("parameter_choice") != kind:
            raise InvalidRequestError(f"expect {expected} for '{name}'")
        changes[name] = getattr(value, kind)
    if "log_format" in changes and changes["log_format"] not in LOG_FORMATS:
        raise InvalidRequestError(f"invalid argument for log_format, got: {changes['log_format']}")
    return replace(current, **changes)


def log_update_from_json(current: LogSettings, body: Any) -> LogSettings:
    """``current`` updated by a ``POST /v2/logging`` body (``null`` leaves a field as it is, as Triton)."""
    if not isinstance(body, dict):
        return current  # Triton finds no field in it: nothing changes
    if body.get("log_file") is not None:
        raise DyntritonError(_LOG_FILE, status="UNIMPLEMENTED")
    changes: dict[str, Any] = {}
    for name in ("log_info", "log_warning", "log_error"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, bool):
            raise _json_type("boolean")
        changes[name] = value
    verbose = body.get("log_verbose_level")
    if verbose is not None:
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose < 0:
            raise _json_type("unsigned-integer")
        changes["log_verbose_level"] = verbose & 0xFFFFFFFF
    log_format = body.get("log_format")
    if log_format is not None:
        if not isinstance(log_format, str):
            raise _json_type("string")
        if log_format not in LOG_FORMATS:
            raise DyntritonError(f"invalid argument for --log_format, got: {log_format}", status="UNAVAILABLE")
        changes["log_format"] = log_format
    return replace(current, **changes)


def _json_type(expected: str) -> DyntritonError:
    """Triton's JSON library's error for a value of the wrong type (Triton answers it 500)."""
    return DyntritonError(f"attempt to access JSON non-{expected} as {expected}", status="INTERNAL")


# -- trace ----------------------------------------------------------------------------------------
#: Triton 2.51's trace settings when ``tritonserver`` starts without trace options.
TRACE_DEFAULTS: Mapping[str, Any] = {
    "trace_level": ("OFF",),
    "trace_rate": 1000,
    "trace_count": -1,
    "log_frequency": 0,
    "trace_file": "",
    "trace_mode": "triton",
}
_UPDATABLE = ("trace_level", "trace_rate", "trace_count", "log_frequency")
#: What Triton 2.51 answers in ``trace_mode`` opentelemetry besides the level, rate, count and mode
#: (``--trace-config opentelemetry,<key>=<value>``), with its defaults; no trace file, no log frequency.
OPENTELEMETRY_DEFAULTS: Mapping[str, str] = {
    "url": "http://localhost:4318/v1/traces",
    "bsp_max_export_batch_size": "512",
    "bsp_schedule_delay": "5000",
    "bsp_max_queue_size": "2048",
}
_INT32 = (-(2**31), 2**31 - 1)
_STOI = re.compile(r"\s*([+-]?\d+)")


def _stoi(name: str, text: str, low: int, high: int, *, minimum: int | None = None, http: bool = False) -> int:
    """``std::stoi`` as Triton calls it (leading digits, int32), with Triton's messages."""
    match = _STOI.match(text)
    if match is None:
        raise InvalidRequestError(f"Unable to parse '{name}', got: {text}")
    value = int(match.group(1))
    if not _INT32[0] <= value <= _INT32[1]:
        raise InvalidRequestError(f"Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {text}")
    if minimum is not None and value < minimum:
        got = f"got:{text}" if http else f"got: {text}"  # Triton's two frontends differ by a space
        raise InvalidRequestError(f"Unable to parse '{name}'. Expecting value >= {minimum}, {got}")
    return value


def _level(values: list[str]) -> tuple[str, ...] | None:
    """Triton's level from its strings: None when none of them is a level (nothing changes)."""
    level: set[str] = set()
    seen = False
    for text in values:
        if text == "OFF":
            if len(values) != 1:
                raise InvalidRequestError("Expect only one trace level 'OFF' is specified")
            return ("OFF",)
        if text in ("TIMESTAMPS", "TENSORS"):
            level.add(text)
            seen = True
    if not seen:
        return None
    return tuple(name for name in ("TIMESTAMPS", "TENSORS") if name in level)


_CLEAR = object()  # a field cleared from its layer


def _parse_trace_value(name: str, values: list[str], *, http: bool) -> Any:
    if name == "trace_level":
        return _level(values)
    if len(values) != 1:
        raise InvalidRequestError(f"expect only 1 value for '{name}'")
    text = values[0]
    if name == "trace_count":
        return _stoi(name, text, -1, 2**31 - 1, minimum=-1, http=http)
    return _stoi(name, text, 0, 2**32 - 1) & 0xFFFFFFFF  # uint32 fields take stoi's value modulo 2**32


@dataclass(frozen=True)
class TraceSettings:
    """The cluster's trace settings: the global layer and the per-model layers (fields they set)."""

    layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # "" = global
    #: the settings the processes started with (``--trace-config``; :func:`dynamo_triton.runtime.tracing`),
    #: under the layers; never stored (every process of a cluster is started with the same).
    start: Mapping[str, Any] = field(default_factory=lambda: TRACE_DEFAULTS, compare=False)

    @property
    def opentelemetry(self) -> bool:
        return self.start.get("trace_mode") == "opentelemetry"

    def effective(self, model: str = "") -> dict[str, Any]:
        """Every field for ``model`` ("" = global): the model's layer, the global one, then the start settings."""
        values = dict(self.start)
        values.update(self.layers.get("", {}))
        if model:
            values.update(self.layers.get(model, {}))
        return values

    def as_grpc(self, model: str = "") -> dict[str, list[str]]:
        """``TraceSettingResponse.settings`` as Triton fills it (in its ``trace_mode``)."""
        values = self.effective(model)
        if self.opentelemetry:
            return {
                "trace_level": list(values["trace_level"]),
                "trace_rate": [str(values["trace_rate"])],
                "trace_count": [str(values["trace_count"])],
                "trace_mode": ["opentelemetry"],
                **{key: [str(values.get(key, default))] for key, default in OPENTELEMETRY_DEFAULTS.items()},
            }
        return {
            "trace_level": list(values["trace_level"]),
            "trace_rate": [str(values["trace_rate"])],
            "trace_count": [str(values["trace_count"])],
            "log_frequency": [str(values["log_frequency"])],
            "trace_file": [values["trace_file"]],
            "trace_mode": [values["trace_mode"]],
        }

    def as_json(self, model: str = "") -> dict[str, Any]:
        """The REST answer, in Triton's key order."""
        grpc = self.as_grpc(model)
        return {key: value if key == "trace_level" else value[0] for key, value in grpc.items()}

    def updated(self, model: str, changes: Mapping[str, Any]) -> TraceSettings:
        """A copy with ``model``'s layer ("" = global) changed (``_CLEAR`` removes a field)."""
        layer = dict(self.layers.get(model, {}))
        for name, value in changes.items():
            if value is _CLEAR:
                layer.pop(name, None)
            elif value is not None:
                layer[name] = value
        layers = {key: dict(value) for key, value in self.layers.items() if key != model}
        if layer:
            layers[model] = layer
        updated = TraceSettings(layers, self.start)
        values = updated.effective(model)
        if tuple(values["trace_level"]) != ("OFF",):  # Triton refuses a setting that would trace but cannot
            reason = "sample rate must be non-zero" if values["trace_rate"] == 0 else "trace file name is not given"
            if values["trace_rate"] != 0 and (values["trace_file"] or self.opentelemetry):
                return updated
            raise InvalidRequestError(f"Attempting to set invalid trace setting :{reason}")
        return updated

    def to_json(self) -> bytes:
        layers = {
            model: {key: list(value) if key == "trace_level" else value for key, value in layer.items()}
            for model, layer in self.layers.items()
        }
        return json.dumps({"layers": layers}, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, start: Mapping[str, Any] = TRACE_DEFAULTS) -> TraceSettings:
        body = json.loads(raw)
        layers = {
            str(model): {
                key: tuple(value) if key == "trace_level" else value
                for key, value in dict(layer).items()
                if key in _UPDATABLE
            }
            for model, layer in dict(body.get("layers", {})).items()
        }
        return cls(layers, start)


def trace_update_from_grpc(current: TraceSettings, model: str, settings: Mapping[str, Any]) -> TraceSettings:
    """``current`` updated by a ``TraceSettingRequest.settings`` map (empty value: clear the field)."""
    if "trace_file" in settings:
        raise DyntritonError(_TRACE_FILE, status="UNIMPLEMENTED")
    changes: dict[str, Any] = {}
    for name in _UPDATABLE:
        if name in settings:
            values = list(settings[name].value)
            changes[name] = _CLEAR if not values else _parse_trace_value(name, values, http=False)
    return current.updated(model, changes)


def trace_update_from_json(current: TraceSettings, model: str, body: Any) -> TraceSettings:
    """``current`` updated by a ``POST …/trace/setting`` body (``null``: clear the field)."""
    if not isinstance(body, dict):
        return current  # Triton finds no field in it: nothing changes
    if "trace_file" in body:
        raise DyntritonError(_TRACE_FILE, status="UNIMPLEMENTED")
    changes: dict[str, Any] = {}
    for name in _UPDATABLE:
        if name not in body:
            continue
        value = body[name]
        if value is None:
            changes[name] = _CLEAR
        elif name == "trace_level":
            if not isinstance(value, list):
                raise _json_type("array")
            if not all(isinstance(item, str) for item in value):
                raise _json_type("string")
            changes[name] = _level(value)
        else:
            if not isinstance(value, str):
                raise _json_type("string")
            changes[name] = _parse_trace_value(name, [value], http=True)
    return current.updated(model, changes)
