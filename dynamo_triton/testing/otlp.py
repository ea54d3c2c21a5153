"""A real OTLP/HTTP trace receiver for tests: what an OpenTelemetry Collector would receive.

:func:`run_otlp_receiver` serves ``POST /v1/traces`` (``application/x-protobuf``, gzip or not) on
a free 127.0.0.1 port in a background thread, decodes each ``ExportTraceServiceRequest`` with the
official ``opentelemetry-proto`` messages and keeps every span as a :class:`ReceivedSpan`. Tests
wait on it with a deadline (:meth:`OtlpReceiver.wait_for`), never with a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dynamo_triton.testing.ports import free_port

__all__ = ["OtlpReceiver", "ReceivedSpan", "run_otlp_receiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span: ids as lowercase hex ("" for no parent), times in Unix ns."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    attributes: dict[str, Any] = field(hash=False)
    start_ns: int = 0
    end_ns: int = 0
    status_code: int = 0  # 0 unset, 1 ok, 2 error (OTLP's Status.code)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


class OtlpReceiver:
    """The spans received so far (thread-safe); ``url`` is the endpoint to export to."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/v1/traces"
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()

    def add(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            service,
                            _attributes(span.attributes),
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            span.status.code,
                        )
                    )
        with self._changed:
            self._spans.extend(spans)
            self._changed.notify_all()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._changed:
            return [span for span in self._spans if trace_id is None or span.trace_id == trace_id]

    def wait_for(self, check: Callable[[list[ReceivedSpan]], bool], timeout: float, what: str) -> list[ReceivedSpan]:
        """Wait until ``check(all spans)`` holds; returns the spans then. AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not check(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted({(span.trace_id, span.name) for span in self._spans})
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; received: {names}")
                self._changed.wait(left)
            return list(self._spans)


@contextlib.contextmanager
def run_otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serve an OTLP/HTTP trace receiver on a free port for the ``with`` block."""
    from aiohttp import web

    port = free_port()
    receiver = OtlpReceiver(port)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner: list[Any] = []

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        receiver.add(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", traces)
        app_runner = web.AppRunner(app)
        await app_runner.setup()
        await web.TCPSite(app_runner, "127.0.0.1", port).start()
        runner.append(app_runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="otlp-receiver", daemon=True)
    thread.start()
    if not started.wait(30):
        raise AssertionError("the OTLP receiver did not start within 30 s")
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
