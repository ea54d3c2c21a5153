"""Closed-loop KServe gRPC load: N concurrent callers, each sending its next request when the last answered.

Requests are serialized once up front and sent as raw bytes over grpc.aio, so
the client spends as little as possible per request and the server under test,
not the load generator, sets the pace.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

__all__ = ["LoadResult", "identity_request", "run_load"]

_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@dataclass(frozen=True)
class LoadResult:
    """Throughput (requests/s) and latency percentiles (ms) of one load run."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def identity_request(model: str, data: np.ndarray, datatype: str = "INT32") -> bytes:
    """A serialized ModelInferRequest for an identity-like model (INPUT0 -> OUTPUT0), raw contents."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype)
    tensor.shape.extend(data.shape)
    request.outputs.add(name="OUTPUT0")
    request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


async def run_load(
    url: str, payload: bytes, *, concurrency: int, seconds: float, warmup: float = 1.0, stream: bool = False
) -> LoadResult:
    """Drive ``url`` with ``payload`` from ``concurrency`` callers for ``seconds`` (after ``warmup``)."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    # One channel per caller: like independent clients, and no single HTTP/2 connection bottleneck.
    channels = [grpc.aio.insecure_channel(url, options=options) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    start_measure = time.perf_counter() + warmup
    stop_at = start_measure + seconds

    async def unary_caller(channel: grpc.aio.Channel) -> None:
        nonlocal errors
        call = channel.unary_unary(_INFER, request_serializer=None, response_deserializer=None)
        while (now := time.perf_counter()) < stop_at:
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            if now >= start_measure:
                latencies.append(time.perf_counter() - now)

    async def stream_caller(channel: grpc.aio.Channel) -> None:
        nonlocal errors
        call = channel.stream_stream(_STREAM, request_serializer=None, response_deserializer=None)()
        try:
            while (now := time.perf_counter()) < stop_at:
                await call.write(payload)
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    errors += 1
                    return
                if service_pb2.ModelStreamInferResponse.FromString(answer).error_message:
                    errors += 1
                elif now >= start_measure:
                    latencies.append(time.perf_counter() - now)
            await call.done_writing()
        finally:
            call.cancel()

    caller = stream_caller if stream else unary_caller
    try:
        await asyncio.gather(*(caller(channel) for channel in channels))
    finally:
        for channel in channels:
            await channel.close()
    ms = [value * 1000 for value in latencies]
    return LoadResult(
        requests=len(ms),
        errors=errors,
        seconds=seconds,
        p50_ms=statistics.median(ms) if ms else float("nan"),
        p99_ms=_percentile(ms, 99),
    )
