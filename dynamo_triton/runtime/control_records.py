"""Cluster model control in the store: the keys, the two JSON records and the load-parameter checks.

Frontends write a *control record* per model (what the cluster should do with it); every worker
started with ``--model-control explicit`` applies it and reports, in its *repository report*, the
state of every model of its repository and the outcome of the last request per model::

    dyntriton/v1/{namespace}/control/{model}          -> ControlRecord     (no lease: the cluster's wish)
    dyntriton/v1/{namespace}/repository/{instance_id} -> RepositoryReport  (the worker's lease)

Both are JSON, versioned by ``schema``, and only grow (readers ignore fields they do not know).
See docs/model-control.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dynamo_triton.errors import ConfigError, InvalidRequestError

__all__ = [
    "CONTROL_SCHEMA",
    "REPORT_SCHEMA",
    "ControlRecord",
    "ModelEntry",
    "RepositoryReport",
    "check_load_parameters",
    "control_key",
    "control_prefix",
    "report_key",
    "reports_prefix",
]

CONTROL_SCHEMA = "dyntriton.model-control/v1"
REPORT_SCHEMA = "dyntriton.repository/v1"
_ROOT = "dyntriton/v1"

#: Linux's NAME_MAX and PATH_MAX: Triton 2.51 aborts the whole server on a ``file:`` path past them.
NAME_MAX = 255
PATH_MAX = 4096


def _namespace_root(namespace: str) -> str:
    if not namespace or "/" in namespace:
        raise ConfigError(f"namespace must be a non-empty name without '/', got {namespace!r}")
    return f"{_ROOT}/{namespace}"


def control_prefix(namespace: str) -> str:
    """The prefix of every control record of ``namespace`` (ends with ``/``)."""
    return f"{_namespace_root(namespace)}/control/"


def control_key(namespace: str, model: str) -> str:
    """The store key of ``model``'s control record."""
    return control_prefix(namespace) + model


def reports_prefix(namespace: str) -> str:
    """The prefix of every worker's repository report (ends with ``/``)."""
    return f"{_namespace_root(namespace)}/repository/"


def report_key(namespace: str, instance_id: str) -> str:
    """The store key of one worker's repository report."""
    return reports_prefix(namespace) + instance_id


def check_load_parameters(model: str, config: str | None, files: Mapping[str, bytes]) -> None:
    """Refuse what Triton would refuse, or die on, before any worker sees it.

    :raises InvalidRequestError: a model name Triton rejects, a ``config`` that is not a JSON object,
        ``file:`` paths without ``config``, or a path that is absolute, climbs out with ``..``, holds a
        NUL, or has a component longer than NAME_MAX (255 bytes) or a length past PATH_MAX.
    """
    if not model.strip() or model.strip() == ".." or "/" in model or "\0" in model:
        raise InvalidRequestError(
            f"invalid model name '{model}', model name must not be empty or contain path traversal characters"
        )
    if len(model.encode()) > NAME_MAX:
        raise InvalidRequestError(f"invalid model name: longer than {NAME_MAX} bytes ({len(model.encode())})")
    if config is not None:
        try:
            parsed = json.loads(config)
        except ValueError as exc:
            raise InvalidRequestError(f"Invalid config override: the 'config' parameter is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidRequestError(
                "Invalid config override: the 'config' parameter must be a JSON object (a ModelConfig)"
            )
    if files and config is None:
        raise InvalidRequestError("Load parameter 'config' must be specified for model file override")
    for path in files:
        _check_file_path(path)


def _check_file_path(path: str) -> None:
    where = f"invalid file parameter 'file:{path[:64]}{'...' if len(path) > 64 else ''}'"
    raw = path.encode()
    if not path or "\0" in path:
        raise InvalidRequestError(f"{where}: the path must be non-empty and hold no NUL byte")
    if path.startswith("/"):
        raise InvalidRequestError(f"{where}: the path must be relative to the model directory, e.g. 1/model.onnx")
    if len(raw) >= PATH_MAX:
        raise InvalidRequestError(f"{where}: the path is {len(raw)} bytes long, the limit is {PATH_MAX - 1}")
    depth = 0
    for part in path.split("/"):
        if len(part.encode()) > NAME_MAX:
            raise InvalidRequestError(
                f"{where}: path component of {len(part.encode())} bytes, longer than NAME_MAX ({NAME_MAX})"
            )
        depth += -1 if part == ".." else 0 if part in ("", ".") else 1
        if depth < 0:
            raise InvalidRequestError(f"{where}: the path must stay within the model directory")


@dataclass(frozen=True)
class ControlRecord:
    """What the cluster should do with one model, as the last request asked.

    :param action: ``load`` or ``unload``.
    :param config: the ``config`` load parameter (a ModelConfig as JSON), or None.
    :param files: the ``file:<path>`` load parameters, path -> content.
    """

    model: str
    action: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    config: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        body = {
            "schema": CONTROL_SCHEMA,
            "model": self.model,
            "action": self.action,
            "request_id": self.request_id,
            "config": self.config,
            "files": {path: base64.b64encode(data).decode() for path, data in self.files.items()},
            "time": self.time,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ControlRecord:
        """Parse a record; raises ConfigError saying what is wrong with it."""
        body = _load(raw, CONTROL_SCHEMA, "control record")
        try:
            action = str(body["action"])
            if action not in ("load", "unload"):
                raise ValueError(f"action {action!r} is neither 'load' nor 'unload'")
            config = body.get("config")
            files = {str(p): base64.b64decode(str(d), validate=True) for p, d in dict(body.get("files") or {}).items()}
            return cls(
                model=str(body["model"]),
                action=action,
                request_id=str(body["request_id"]),
                config=None if config is None else str(config),
                files=files,
                time=float(body.get("time", 0.0)),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ConfigError(f"control record is missing or has a bad field: {exc}") from exc


@dataclass(frozen=True)
class ModelEntry:
    """One model of a worker's repository: its state and the outcome of the last request about it.

    :param state: Triton's words: ``READY``, ``LOADING``, ``UNLOADING``, ``UNAVAILABLE``, or "" (never loaded).
    :param reason: why it is UNAVAILABLE (Triton's load error, or ``unloaded``).
    :param request_id: the last control request applied to it ("" if none).
    :param outcome: that request's result: ``ok``, ``error``, or "" while it runs.
    :param error: the error's message, and ``status`` its gRPC status name.
    """

    state: str = ""
    version: str = ""
    reason: str = ""
    request_id: str = ""
    action: str = ""
    outcome: str = ""
    error: str = ""
    status: str = ""

    def to_dict(self) -> dict[str, str]:
        return {name: value for name, value in self.__dict__.items() if value}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> ModelEntry:
        known = cls.__dataclass_fields__
        return cls(**{name: str(value) for name, value in body.items() if name in known})


@dataclass(frozen=True)
class RepositoryReport:
    """A worker's view of its model repository, under its lease.

    :param control: ``explicit`` (the worker applies control records) or ``none`` (its models are fixed).
    :param models: every model of the repository, and those loaded from ``file:`` overrides.
    """

    instance_id: str
    control: str
    models: Mapping[str, ModelEntry]
    host: str = ""

    def to_json(self) -> bytes:
        body = {
            "schema": REPORT_SCHEMA,
            "instance_id": self.instance_id,
            "control": self.control,
            "host": self.host,
            "models": {name: entry.to_dict() for name, entry in sorted(self.models.items())},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RepositoryReport:
        """Parse a report; raises ConfigError saying what is wrong with it."""
        body = _load(raw, REPORT_SCHEMA, "repository report")
        try:
            return cls(
                instance_id=str(body["instance_id"]),
                control=str(body["control"]),
                models={str(n): ModelEntry.from_dict(e) for n, e in dict(body["models"]).items()},
                host=str(body.get("host", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"repository report is missing or has a bad field: {exc}") from exc


def _load(raw: bytes, schema: str, what: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("schema") != schema:
        found = body.get("schema") if isinstance(body, dict) else None
        raise ConfigError(f"{what} schema is {found!r}, expected {schema!r}")
    return body
