"""The HTTP frontend: health, liveness, Prometheus metrics shared with gRPC, KServe model endpoints."""

from __future__ import annotations

import contextlib

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException


async def test_frontend_http_health_live_and_models(http_frontend, service):
    base = f"http://127.0.0.1:{http_frontend.port}"
    async with aiohttp.ClientSession() as session:
        for path in ("/health", "/live", "/v2/health/live", "/v2/health/ready", "/v2/models/identity/ready"):
            async with session.get(base + path) as response:
                assert response.status == 200, path
        async with session.get(base + "/v2/models/identity") as response:
            assert (await response.json())["name"] == "identity"
        async with session.get(base + "/v2/models/nope") as response:
            assert response.status == 404
            assert "model 'nope' is not served" in (await response.json())["error"]
        service.ready_flag = False
        for path in ("/health", "/v2/health/ready"):
            async with session.get(base + path) as response:
                assert response.status == 503, path
        async with session.get(base + "/live") as response:
            assert response.status == 200


async def test_frontend_http_metrics_count_grpc_requests(http_frontend, grpc_frontend):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_frontend.port}")
    try:
        tensor = grpcclient.InferInput("INPUT0", [2], "INT32")
        tensor.set_data_from_numpy(np.zeros(2, np.int32))
        await client.infer("identity", [tensor])
        with contextlib.suppress(InferenceServerException):
            await client.infer("dead", [tensor])
    finally:
        await client.close()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{http_frontend.port}/metrics") as response,
    ):
        text = await response.text()
    assert 'dyntriton_frontend_requests_total{model="identity",protocol="grpc"} 1.0' in text
    assert 'dyntriton_frontend_request_failures_total{code="UNAVAILABLE",model="dead",protocol="grpc"} 1.0' in text
    assert 'dyntriton_frontend_request_duration_seconds_count{model="identity",protocol="grpc"} 1.0' in text
