"""TritonBackend: the dyntriton Backend protocol over an embedded Triton server, in KServe terms."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.backend import BackendSettings, ModelInfo
from dynamo_triton.errors import BackendError, InvalidRequestError, ModelNotFoundError, TritonError
from dynamo_triton.settings import promote
from dynamo_triton.tensors import Raw, contents_to_raw
from dynamo_triton.wire import field_header
from dyntriton_backend_triton import capi
from dyntriton_backend_triton.classification import class_count
from dyntriton_backend_triton.environment import (
    backends_directory,
    clean_stale_shm,
    prepare_stub_environment,
    shm_regions,
    stub_environment,
)
from dyntriton_backend_triton.fastpath import FastPath
from dyntriton_backend_triton.locator import TritonInstall, locate_triton
from dyntriton_backend_triton.options import TritonSettings
from dyntriton_backend_triton.reaper import Reaper
from dyntriton_backend_triton.regions import take_regions
from dyntriton_backend_triton.server import (
    STUB_UNHEALTHY,
    ClassificationSpec,
    InputTensor,
    ServerOptions,
    TritonResponse,
    TritonServer,
)

__all__ = ["TritonBackend"]

#: Field number of ``raw_output_contents`` in KServe's ModelInferResponse.
_RAW_OUTPUT_CONTENTS = service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number

log = logging.getLogger(__name__)

#: KServe request parameters Triton's own frontends turn into request fields.
_SPECIAL_PARAMETERS = {"priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "binary_data_output"}


def _parameter_value(parameter: service_pb2.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def _version_number(version: str) -> int:
    if not version:
        return -1
    try:
        return int(version)
    except ValueError:
        raise InvalidRequestError(f"model version must be an integer, got '{version}'") from None


def load_failure_reason(name: str, message: str) -> str:
    r"""Triton's load error on one line: its repeated prefix dropped, the python traceback folded.

    ``load failed for model 'm': version 1 is at UNAVAILABLE state: Internal: RuntimeError: x\n\nAt:\n
    /r/m/1/model.py(3): initialize\n;`` becomes ``version 1 is at UNAVAILABLE state: Internal:
    RuntimeError: x (at /r/m/1/model.py(3): initialize)``.
    """
    text = message.strip().rstrip(";").strip()
    prefix = f"load failed for model '{name}': "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    reason, _, where = text.partition("\n\nAt:\n")
    reason = " ".join(reason.split())
    frames = [line.strip() for line in where.splitlines() if line.strip() and line.strip() != ";"]
    return reason + (f" (at {' <- '.join(frames)})" if frames else "")


def _override_parse_error(config: str) -> str | None:
    """Triton logs why a ``config`` override does not parse and returns "failed to poll": say it ourselves."""
    try:
        json_format.Parse(config, model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        return f"Invalid config override: {exc}"
    return None


def _legacy_extra(settings: BackendSettings) -> dict[str, object]:
    """Triton's fields given the old way, in ``BackendSettings.extra``."""
    names = ("triton_home", "model_load_retries", "c_callbacks", "fast_path")
    return {name: settings.extra[name] for name in names if name in settings.extra}


class TritonBackend:
    """Runs models of a Triton model repository in this process (see dynamo_triton.backend.Backend)."""

    def __init__(self, settings: BackendSettings, install: TritonInstall | None = None):
        if not isinstance(settings, TritonSettings):  # the common settings only: Triton's own take defaults
            settings = promote(TritonSettings, settings, **_legacy_extra(settings))
        self.settings: TritonSettings = settings
        self.repository = Path(settings.model_repository).resolve()
        self._install = install
        self._server: TritonServer | None = None
        self._models: dict[str, ModelInfo] = {}
        self._shm_before: set[str] = set()
        self._identity = ("triton", "")
        self._reaper = Reaper()
        self._broken = ""  # the model whose stub died: the worker exits (see _stub_died)
        self._on_fatal: list[Callable[[str], None]] = []

    @property
    def server(self) -> TritonServer:
        if self._server is None:
            raise BackendError("the triton backend is not started", status="UNAVAILABLE")
        return self._server

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.repository.is_dir():
            raise ModelNotFoundError(
                f"model repository {self.repository} does not exist",
                hint="pass --model-repository pointing at a folder of <model>/config.pbtxt",
            )
        install = self._install or locate_triton(self.settings.triton_home)
        prepare_stub_environment(install)
        clean_stale_shm()
        self._shm_before = shm_regions()
        options = ServerOptions(
            model_repository=self.repository,
            backend_directory=backends_directory(install, self.settings.backend_directory),
            log_verbose=self.settings.log_verbose,
            model_load_retries=self.settings.model_load_retries,
            c_callbacks=self.settings.c_callbacks,
            # DYNTRITON_FAST_PATH=0 sends every request through the general path (A/B measurements, a fallback).
            fast_path=self.settings.fast_path and os.environ.get("DYNTRITON_FAST_PATH", "1") != "0",
        )
        server = TritonServer(install, options)
        # Before any stub exists: whatever kills this process, its stubs die within a second.
        self._reaper.start()
        try:
            await asyncio.to_thread(server.start_blocking)
        except BaseException:
            await asyncio.to_thread(self._reaper.stop)
            raise
        self._server = server
        metadata = server.server_metadata()
        self._identity = (str(metadata.get("name") or "triton"), str(metadata.get("version") or ""))
        log.info("embedded Triton %s from %s", self._identity[1], install.source)

    async def stop(self, *, timeout: float = 30.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(server.stop_blocking), timeout)
        except TimeoutError:
            log.warning("Triton did not stop within %.0f s; leaving it to process exit", timeout)
        await asyncio.to_thread(self._reaper.stop)
        clean_stale_shm(only=shm_regions() - self._shm_before)

    def standalone_server(self) -> tuple[list[str], dict[str, str]]:
        """See :class:`dynamo_triton.backend.StandaloneServer`: the distribution's ``tritonserver``."""
        install = self._install or locate_triton(self.settings.extra.get("triton_home"))
        if install.binary is None:
            raise BackendError(
                f"the Triton distribution at {install.source} has no tritonserver binary",
                hint="set TRITON_HOME to a full Triton install, or pip install 'dynamo-triton[triton]'",
            )
        backends = backends_directory(install, self.settings.backend_directory)
        return [str(install.binary), f"--backend-directory={backends}"], stub_environment(install, os.environ)

    async def metrics_text(self) -> str:
        """Triton's own metrics (``nv_inference_*``, ``nv_cpu_*``...) in Prometheus text; empty when stopped."""
        server = self._server
        return "" if server is None else await asyncio.to_thread(server.metrics_text)

    def apply_log_settings(self, settings: Any) -> None:
        """The cluster's log settings (``dynamo_triton.runtime.server_settings.LogSettings``) on this Triton."""
        self.server.set_log(
            info=settings.log_info,
            warning=settings.log_warning,
            error=settings.log_error,
            verbose=min(settings.log_verbose_level, 2**31 - 1),
            iso8601=settings.log_format == "ISO8601",
        )

    def server_identity(self) -> tuple[str, str]:
        return self._identity

    async def ready(self) -> bool:
        """Not ready once a stub died (the worker's /health says 503 until it exits)."""
        return self._server is not None and not self._broken and await asyncio.to_thread(self._server.is_ready)

    # -- models ----------------------------------------------------------------------------------
    async def repository_index(self) -> list[str]:
        index = await asyncio.to_thread(self.server.model_index)
        return sorted({entry["name"] for entry in index})

    async def load_model(
        self, name: str, *, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> ModelInfo:
        if not files:  # an override directory brings its own model: the repository need not have it
            known = await self.repository_index()
            if name not in known:
                raise ModelNotFoundError(
                    f"model '{name}' is not in the model repository {self.repository}; "
                    f"it has: {', '.join(known) or 'no models'}"
                )
        try:
            await asyncio.to_thread(self.server.load_model, name, config=config, files=files)
        except TritonError as exc:
            detail = (
                _override_parse_error(config) if config is not None else self._config_parse_error(name)
            ) or self._backend_search_note(exc.message)
            message = f"failed to load model '{name}': {load_failure_reason(name, exc.message)}"
            fix = "the config override" if config is not None else f"the model in {self.repository / name}"
            raise TritonError(
                exc.code,
                message + (f"; {detail}" if detail else ""),
                hint=None
                if detail
                else f"fix {fix}, or leave it out "
                "(name the models to serve with --model); --model-load-retries N retries loads that fail now and then",
            ) from exc
        info = await asyncio.to_thread(self._describe, name)
        self._models[name] = info
        return info

    def _backend_search_note(self, message: str) -> str | None:
        """Name the folders searched when Triton cannot find a model's backend."""
        if "unable to find backend" not in message or self._server is None:
            return None
        folder = self._server.options.backend_directory
        present = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        return (
            f"backends are searched in {folder} (and the model's own folder); found: {', '.join(present) or 'none'}; "
            "install the backend there or pass --backend-directory"
        )

    def _config_parse_error(self, name: str) -> str | None:
        """Triton logs config.pbtxt parse errors instead of returning them: find the message ourselves."""
        path = self.repository / name / "config.pbtxt"
        try:
            text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as exc:
            return f"{path} does not parse: {exc}"
        except (OSError, UnicodeDecodeError):
            return None
        return None

    def _describe(self, name: str) -> ModelInfo:
        config = json_format.ParseDict(
            self.server.model_config(name), model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        metadata = json_format.ParseDict(
            self.server.model_metadata(name), service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True
        )
        versions = list(metadata.versions)
        return ModelInfo(
            name=name,
            version=versions[-1] if versions else "1",
            config=config,
            metadata=metadata,
            decoupled=self.server.is_decoupled(name),
        )

    async def unload_model(self, name: str, *, timeout: float = 60.0) -> None:
        """Unload ``name``; returns once Triton has (its requests in flight finish first), or after ``timeout``."""
        if name not in self._models:
            raise ModelNotFoundError(f"model '{name}' is not loaded; loaded: {', '.join(sorted(self._models))}")
        await asyncio.to_thread(self.server.unload_model, name)
        del self._models[name]
        # Triton unloads in the background once the model's in-flight requests are done: wait for it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            index = await asyncio.to_thread(self.server.model_index)
            if not any(entry["name"] == name and entry.get("state") == "UNLOADING" for entry in index):
                return
            await asyncio.sleep(0.05)
        log.warning("model '%s' is still unloading after %.0f s", name, timeout)

    def model(self, name: str) -> ModelInfo:
        try:
            return self._models[name]
        except KeyError:
            loaded = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFoundError(f"Request for unknown model: '{name}' is not loaded (loaded: {loaded})") from None

    async def statistics(self, name: str = "") -> service_pb2.ModelStatisticsResponse:
        stats = await asyncio.to_thread(self.server.model_statistics, name)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # -- inference -------------------------------------------------------------------------------
    async def infer(self, request: service_pb2.ModelInferRequest) -> AsyncIterator[service_pb2.ModelInferResponse]:
        """Run ``request``; yield its responses. Outputs asked with a ``classification`` parameter come
        back as Triton's frontends answer them: BYTES top-K ``"value:index[:label]"`` (see ``classification.py``).
        """
        async for info, response in self._run(request):
            yield self._to_kserve(request, info, response)

    async def infer_serialized(
        self, request: service_pb2.ModelInferRequest, raw_inputs: Sequence[Raw] | None = None
    ) -> AsyncIterator[list[bytes | memoryview]]:
        """Like :meth:`infer` (classifications included), the worker's path: Triton reads the tensors
        where they are (``raw_inputs`` or the request's own), and each response comes back as parts:
        its header serialized by protobuf, then per output a ``raw_output_contents`` field header and
        a view of the buffer Triton wrote the tensor into. No tensor byte is copied or joined."""
        async for info, response in self._run(request, raw_inputs):
            parts: list[bytes | memoryview] = [self._header(request, info, response).SerializeToString()]
            for tensor in response.outputs:
                parts += (field_header(_RAW_OUTPUT_CONTENTS, len(tensor.data)), tensor.data)
            yield parts

    def infer_wire(self, payload: Raw) -> tuple[str, Awaitable[list[list[Any]]]] | None:
        """The worker's fast path: a plain unary request (see ``fastpath.py``) as its serialized bytes,
        submitted now in C; None when it is not one (then :meth:`infer_serialized` serves it).

        :return: the model's name and an awaitable of the responses as :meth:`infer_serialized` yields
            them (the same bytes); cancelling the awaitable cancels the request in Triton.
        """
        server = self._server
        fast = server.fast if server is not None else None
        if fast is None or self._broken:
            return None
        name = fast.parse(payload)
        if name is None:
            return None
        try:
            info = self._models.get(name.decode())
        except UnicodeDecodeError:
            return None
        if info is None or info.decoupled:
            return None
        assert server is not None
        server.attach()
        try:
            key, future = fast.submit(fast.request_version() or info.version.encode())
        except TritonError as exc:
            return info.name, self._fast_failed(exc, info.name)
        return info.name, self._fast_answer(fast, key, future, info.name)

    async def _fast_answer(
        self, fast: FastPath, key: int, future: asyncio.Future[list[list[Any]]], name: str
    ) -> list[list[Any]]:
        try:
            return await future
        except asyncio.CancelledError:
            fast.cancel(key)  # the caller went away or its deadline passed: Triton stops the request too
            raise
        except TritonError as exc:
            if STUB_UNHEALTHY in exc.message:
                self._stub_died(name, exc)
            raise

    async def _fast_failed(self, error: TritonError, name: str) -> list[list[Any]]:
        if STUB_UNHEALTHY in error.message:
            self._stub_died(name, error)
        raise error

    async def _run(
        self, request: service_pb2.ModelInferRequest, raw_inputs: Sequence[Raw] | None = None
    ) -> AsyncIterator[tuple[ModelInfo, TritonResponse]]:
        info = self.model(request.model_name)
        if self._broken:
            raise BackendError(
                f"this worker is restarting: the python backend stub of model '{self._broken}' died",
                status="UNAVAILABLE",
            )
        regions = take_regions(request)  # shared memory a frontend of this host handed over by reference
        inputs = self._inputs(request, raw_inputs)
        if regions is not None:
            for index, view in regions.inputs.items():
                tensor = inputs[index]
                inputs[index] = InputTensor(tensor.name, tensor.datatype, tensor.shape, view)
        classification = self._classification(request, info)
        parameters: dict[str, Any] = {}
        priority, timeout_us, correlation, flags = 0, 0, None, 0
        for key, parameter in request.parameters.items():
            value = _parameter_value(parameter)
            if key == "priority":
                priority = int(value)
            elif key == "timeout":
                timeout_us = int(value)
            elif key == "sequence_id":
                correlation = value
            elif key == "sequence_start":
                flags |= capi.REQUEST_FLAG_SEQUENCE_START if value else 0
            elif key == "sequence_end":
                flags |= capi.REQUEST_FLAG_SEQUENCE_END if value else 0
            elif key not in _SPECIAL_PARAMETERS and value is not None:
                parameters[key] = value
        stream = self.server.infer(
            request.model_name,
            inputs,
            version=_version_number(request.model_version),
            outputs=[output.name for output in request.outputs],
            request_id=request.id,
            priority=priority,
            timeout_us=timeout_us,
            parameters=parameters,
            correlation_id=correlation,
            flags=flags,
            classification=classification,
            output_regions=regions.outputs if regions is not None else (),
            hold=regions,
        )
        try:
            async for response in stream:
                if response.outputs or not (response.final and info.decoupled):
                    yield info, response
        except TritonError as exc:
            if STUB_UNHEALTHY in exc.message:
                self._stub_died(info.name, exc)
            raise
        finally:
            await stream.aclose()

    def on_fatal(self, callback: Callable[[str], None]) -> None:
        """See :class:`dynamo_triton.backend.FatalReporting`: called when a python backend stub died."""
        self._on_fatal.append(callback)

    def _stub_died(self, name: str, error: TritonError) -> None:
        """A python-backend stub of ``name`` died. Triton 2.51 never restarts it (every later request fails
        "is not healthy"), loading the unchanged model again is a no-op, and unloading it hangs on the dead
        stub: the worker cannot recover in-process. The backend stops answering for the model at once
        (UNAVAILABLE, which the frontend retries on another instance) and reports it (``on_fatal``): the
        worker withdraws its cards, drains and exits so that its supervisor (serve, systemd, Kubernetes)
        restarts it; the reaper takes its other stubs along."""
        if self._broken:
            return
        self._broken = name
        reason = f"the python backend stub of model '{name}' died ({error.message})"
        log.error("model '%s': %s Triton can neither restart the stub nor unload the model", name, error.message)
        loop = asyncio.get_running_loop()
        for callback in self._on_fatal:
            loop.call_soon(callback, reason)

    @staticmethod
    def _classification(request: service_pb2.ModelInferRequest, info: ModelInfo) -> ClassificationSpec | None:
        """The outputs ``request`` asks as classifications, or None; raises InvalidRequestError as Triton would."""
        counts = {}
        for output in request.outputs:
            count = class_count(output)
            if count is not None:
                counts[output.name] = count
        if not counts:
            return None
        return ClassificationSpec(counts, batched=info.config.max_batch_size > 0)

    @staticmethod
    def _inputs(request: service_pb2.ModelInferRequest, raw_inputs: Sequence[Raw] | None = None) -> list[InputTensor]:
        raw = request.raw_input_contents if raw_inputs is None else raw_inputs
        if raw and len(raw) != len(request.inputs):
            raise InvalidRequestError(
                f"expected {len(request.inputs)} raw input contents (one per input), got {len(raw)}"
            )
        inputs = []
        for index, tensor in enumerate(request.inputs):
            data = raw[index] if raw else contents_to_raw(tensor.contents, tensor.datatype)
            inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
        return inputs

    @staticmethod
    def _header(
        request: service_pb2.ModelInferRequest, info: ModelInfo, response: TritonResponse
    ) -> service_pb2.ModelInferResponse:
        """The response without its tensor bytes."""
        out = service_pb2.ModelInferResponse(
            model_name=info.name, model_version=request.model_version or info.version, id=request.id
        )
        for tensor in response.outputs:
            item = out.outputs.add(name=tensor.name, datatype=tensor.datatype)
            item.shape.extend(tensor.shape)
        if info.decoupled and response.final:
            out.parameters["triton_final_response"].bool_param = True
        return out

    @classmethod
    def _to_kserve(
        cls, request: service_pb2.ModelInferRequest, info: ModelInfo, response: TritonResponse
    ) -> service_pb2.ModelInferResponse:
        out = cls._header(request, info, response)
        out.raw_output_contents.extend(bytes(tensor.data) for tensor in response.outputs)
        return out
