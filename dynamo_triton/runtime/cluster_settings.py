"""The cluster's log and trace settings in the store, and who applies them.

Like model control (``control_records.py``), a frontend writes what the cluster should do and
every process follows it::

    dyntriton/v1/{namespace}/settings/logging -> LogSettings JSON   (no lease: the cluster's wish)
    dyntriton/v1/{namespace}/settings/trace   -> TraceSettings JSON

:class:`ClusterSettings` answers the logging and trace extensions on a frontend (read, update,
answer the settings in effect). :class:`SettingsFollower` watches the logging record in every
worker and frontend and applies it: to the process's Python log level, and, in a worker, to
its backend (Triton's process-wide log flags through ``TRITONSERVER_ServerOptionsSetLog*``, which
apply at once, as Triton's own frontends use them). Trace settings are kept and answered as
Triton answers them; the frontends follow them (a frontend samples the requests to trace, in
``trace_mode`` opentelemetry: ``runtime/tracing.py``), and a worker traces the requests a frontend
sent it with a trace context (its Triton's timestamps through ``TRITONSERVER_InferenceTrace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.kv import EventKind, KVStore
from dynamo_triton.runtime.server_settings import (
    TRACE_DEFAULTS,
    LogSettings,
    TraceSettings,
    log_update_from_grpc,
    log_update_from_json,
    trace_update_from_grpc,
    trace_update_from_json,
)

__all__ = ["ClusterSettings", "SettingsFollower", "apply_to_python_logging", "logging_key", "trace_key"]

log = logging.getLogger(__name__)


def _prefix(namespace: str) -> str:
    if not namespace or "/" in namespace:
        raise ConfigError(f"namespace must be a non-empty name without '/', got {namespace!r}")
    return f"dyntriton/v1/{namespace}/settings/"


def logging_key(namespace: str) -> str:
    return _prefix(namespace) + "logging"


def trace_key(namespace: str) -> str:
    return _prefix(namespace) + "trace"


def apply_to_python_logging(settings: LogSettings) -> None:
    """The nearest Python root log level: DEBUG with a verbose level, else the lowest level still on."""
    if settings.log_verbose_level > 0:
        level = logging.DEBUG
    elif settings.log_info:
        level = logging.INFO
    elif settings.log_warning:
        level = logging.WARNING
    elif settings.log_error:
        level = logging.ERROR
    else:
        level = logging.CRITICAL + 10
    logging.getLogger().setLevel(level)


class ClusterSettings:
    """The logging and trace extensions of a frontend, over the store.

    :param initial_log: the log settings the workers start with (their Triton's flags), answered
        until an update writes the cluster's record.
    :param model_ready: whether a model is served now (trace settings of a model need it, as Triton).
    :param initial_trace: the trace settings the processes started with (``--trace-config``).
    :param trace_applied: called with new trace settings after an update here (this frontend's tracing).
    """

    def __init__(
        self,
        store: KVStore,
        namespace: str,
        *,
        initial_log: LogSettings | None = None,
        model_ready: Callable[[str], bool] = lambda _name: True,
        initial_trace: Mapping[str, Any] = TRACE_DEFAULTS,
        trace_applied: Callable[[TraceSettings], Any] | None = None,
    ):
        self.store, self.namespace = store, namespace
        self.initial_trace, self._trace_applied = initial_trace, trace_applied
        self.initial_log = initial_log or LogSettings(log_info=False)
        self._model_ready = model_ready
        self._lock = asyncio.Lock()

    # -- logging ---------------------------------------------------------------------------------
    async def log_settings(self) -> LogSettings:
        """The settings in effect (the cluster's record, else what the workers start with)."""
        entry = await self.store.get(logging_key(self.namespace))
        if entry is None:
            return self.initial_log
        try:
            return LogSettings.from_json(entry.value)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring the cluster's log settings record: %s", exc)
            return self.initial_log

    async def update_log(self, *, grpc: Any = None, json: Any = None) -> LogSettings:
        """Apply a gRPC settings map or a REST body; returns the settings now in effect."""
        async with self._lock:
            current = await self.log_settings()
            updated = log_update_from_grpc(current, grpc) if grpc is not None else log_update_from_json(current, json)
            if updated != current:
                await self.store.put(logging_key(self.namespace), updated.to_json())
                apply_to_python_logging(updated)  # at once here; the other processes follow the record
            return updated

    # -- trace -----------------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model and not self._model_ready(model):
            raise DyntritonError(f"Request for unknown model : {model}", status="INVALID_ARGUMENT")

    async def trace_settings(self, model: str = "") -> TraceSettings:
        """The cluster's trace settings (read ``.as_grpc(model)`` / ``.as_json(model)``)."""
        self._check_model(model)
        entry = await self.store.get(trace_key(self.namespace))
        if entry is None:
            return TraceSettings(start=self.initial_trace)
        try:
            return TraceSettings.from_json(entry.value, self.initial_trace)
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring the cluster's trace settings record: %s", exc)
            return TraceSettings(start=self.initial_trace)

    async def update_trace(self, model: str = "", *, grpc: Any = None, json: Any = None) -> TraceSettings:
        """Apply a gRPC settings map or a REST body to ``model``'s layer ("" = global)."""
        async with self._lock:
            current = await self.trace_settings(model)
            if grpc is not None:
                updated = trace_update_from_grpc(current, model, grpc)
            else:
                updated = trace_update_from_json(current, model, json)
            if updated != current:
                await self.store.put(trace_key(self.namespace), updated.to_json())
                if self._trace_applied is not None:
                    self._trace_applied(updated)  # at once here; the other frontends follow the record
            return updated


class SettingsFollower:
    """Applies the cluster's log settings record in this process whenever it changes.

    :param apply: called with each new record (the backend's flags, the Python log level...).
    :param trace: ``(start settings, apply)``: also follow the trace record (a frontend's tracing).
    """

    def __init__(
        self,
        store: KVStore,
        namespace: str,
        apply: Callable[[LogSettings], Any],
        *,
        trace: tuple[Mapping[str, Any], Callable[[TraceSettings], Any]] | None = None,
    ):
        self.store, self.namespace, self._apply = store, namespace, apply
        self._trace = trace
        self._task: asyncio.Task[None] | None = None
        self.applied: LogSettings | None = None

    async def start(self) -> asyncio.Task[None]:
        """Start following; returns the task (cancel it, or call :meth:`stop`, to stop)."""
        self._task = asyncio.create_task(self._follow(), name="dyntriton-settings")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        key, traces, delay = logging_key(self.namespace), trace_key(self.namespace), 0.2
        while True:
            try:
                async with self.store.watch(_prefix(self.namespace)) as watch:
                    for entry in watch.snapshot:
                        if entry.key == key:
                            await self._received(entry.value)
                        elif entry.key == traces:
                            self._received_trace(entry.value)
                    delay = 0.2
                    async for event in watch:
                        if event.kind is EventKind.PUT and event.key == key and event.value is not None:
                            await self._received(event.value)
                        elif event.kind is EventKind.PUT and event.key == traces and event.value is not None:
                            self._received_trace(event.value)
            except asyncio.CancelledError:
                raise
            except DyntritonError as exc:
                log.warning("watch on the cluster's settings failed (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _received_trace(self, raw: bytes) -> None:
        if self._trace is None:
            return
        start, apply = self._trace
        try:
            apply(TraceSettings.from_json(raw, start))
        except Exception:
            log.exception("applying the cluster's trace settings failed")

    async def _received(self, raw: bytes) -> None:
        try:
            settings = LogSettings.from_json(raw)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring the cluster's log settings record: %s", exc)
            return
        if settings == self.applied:
            return
        try:
            result = self._apply(settings)
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("applying the cluster's log settings failed")
            return
        self.applied = settings
