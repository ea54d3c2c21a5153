"""The REST frontend over the in-test routing core: real tritonclient.http (sync and aio) and raw HTTP."""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from dyntriton_frontend_http.options import HttpSettings
from dyntriton_frontend_http.server import HttpFrontend

from dynamo_triton.testing.wait import until


def _base(frontend) -> str:
    return f"http://127.0.0.1:{frontend.port}"


def _sync_round_trip(port: int, binary: bool, compression: str | None) -> tuple[np.ndarray, str]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        values = np.arange(16, dtype=np.int32)
        tensor = httpclient.InferInput("INPUT0", [16], "INT32")
        tensor.set_data_from_numpy(values, binary_data=binary)
        result = client.infer(
            "identity",
            [tensor],
            outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
            request_id="r1",
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        return result.as_numpy("OUTPUT0"), result.get_response()["id"]
    finally:
        client.close()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
async def test_frontend_http_sync_tritonclient_round_trip(http_frontend, binary, compression):
    values, request_id = await asyncio.to_thread(_sync_round_trip, http_frontend.port, binary, compression)
    np.testing.assert_array_equal(values, np.arange(16, dtype=np.int32))
    assert request_id == "r1"


async def test_frontend_http_aio_tritonclient_endpoints(http_frontend, service):
    client = aioclient.InferenceServerClient(f"127.0.0.1:{http_frontend.port}")
    try:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready("identity") and not await client.is_model_ready("nope")
        assert (await client.get_server_metadata())["name"] == "triton"
        assert (await client.get_model_metadata("identity"))["inputs"][0]["shape"] == [-1]
        config = await client.get_model_config("identity")
        assert config["input"][0]["dims"] == [-1] and config["max_batch_size"] == 0
        stats = await client.get_inference_statistics("identity")
        assert stats["model_stats"][0]["inference_count"] == 7
        assert len((await client.get_inference_statistics())["model_stats"]) == len(service.models())
        index = await client.get_model_repository_index()
        assert [m["name"] for m in index] == [m.name for m in service.models()]
        assert {m["state"] for m in index} == {"READY"}
        tensor = aioclient.InferInput("INPUT0", [3], "INT32")
        tensor.set_data_from_numpy(np.array([5, 6, 7], np.int32))
        result = await client.infer("identity", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [5, 6, 7])
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v2/models/nope/infer", b"{}", 404, "model 'nope' is not served"),
        (
            "POST",
            "/v2/models/dead/infer",
            b'{"inputs":[{"name":"INPUT0","shape":[1],"datatype":"INT32","data":[1]}]}',
            503,
            "no live instance of model 'dead'",
        ),
        ("POST", "/v2/models/identity/infer", b"{not json", 400, "failed to parse the request JSON buffer"),
        (
            "POST",
            "/v2/models/identity/infer",
            b'{"inputs":[{"name":"INPUT0","shape":[2],"datatype":"FP32","data":[1,2]}]}',
            400,
            "data-type is 'FP32', but model 'identity' expects 'INT32'",
        ),
        ("POST", "/v2/models/repeat/infer", b"{}", 400, "generate_stream"),
        ("GET", "/v2/models/identity/infer", b"", 405, "Method Not Allowed"),
        ("GET", "/v2/nothing", b"", 404, "Not Found"),
        ("GET", "/v2/models/identity/versions/x", b"", 404, "Not Found"),
        ("POST", "/v2/repository/index", b'{"ready": 3}', 400, "Invalid value for 'ready': expected a boolean"),
    ],
)
async def test_frontend_http_errors_are_triton_json_with_the_right_status(
    http_frontend, method, path, body, status, message
):
    async with aiohttp.ClientSession() as session, session.request(method, _base(http_frontend) + path, data=body) as r:
        assert r.status == status
        assert r.content_type == "application/json"
        assert message in (await r.json())["error"]


async def test_frontend_http_unknown_content_encoding_is_415_listing_the_supported_ones(http_frontend):
    url = _base(http_frontend) + "/v2/models/identity/infer"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b"x", headers={"Content-Encoding": "br"}) as r,
    ):
        assert r.status == 415
        assert r.headers["Accept-Encoding"] == "gzip, deflate"
        assert "Unsupported compression type 'br'" in (await r.json())["error"]


async def test_frontend_http_body_limit_is_413_before_and_after_decompression(service):
    frontend = HttpFrontend(HttpSettings(host="127.0.0.1", port=0, max_input_size=1024), service)
    await frontend.start()
    try:
        url = _base(frontend) + "/v2/models/identity/infer"
        header = {"inputs": [{"name": "INPUT0", "shape": [1000], "datatype": "INT32", "data": [0] * 1000}]}
        small_when_compressed = gzip.compress(json.dumps(header).encode())
        assert len(small_when_compressed) < 1024
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"x" * 2048) as r:
                assert r.status == 413
                assert "exceeds the maximum allowed input size of 1024 bytes" in (await r.json())["error"]
            async with session.post(url, data=small_when_compressed, headers={"Content-Encoding": "gzip"}) as r:
                assert r.status == 413
                assert "--http-max-input-size" in (await r.json())["error"]
    finally:
        await frontend.stop()


async def test_frontend_http_binary_extension_raw(http_frontend):
    values = np.arange(8, dtype=np.int32)
    header = json.dumps(
        {
            "inputs": [{"name": "INPUT0", "shape": [8], "datatype": "INT32", "parameters": {"binary_data_size": 32}}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    url = _base(http_frontend) + "/v2/models/identity/infer"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=header + values.tobytes(), headers=headers) as r,
    ):
        assert r.status == 200
        body = await r.read()
    length = int(r.headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:length])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 32
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.int32), values)


async def test_frontend_http_generate_stream_sends_every_response_as_an_event(http_frontend):
    url = _base(http_frontend) + "/v2/models/repeat/generate_stream"
    async with aiohttp.ClientSession() as session, session.post(url, json={"id": "g", "INPUT0": [1, 2]}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        text = await r.text()
    events = [json.loads(line.removeprefix("data: ")) for line in text.split("\n\n") if line]
    assert events == [{"OUTPUT0": [1, 2], "id": "g", "model_name": "repeat", "model_version": "1"}] * 3
    generate = _base(http_frontend) + "/v2/models/repeat/generate"
    async with aiohttp.ClientSession() as session, session.post(generate, json={"INPUT0": [1]}) as r:
        assert r.status == 400
        assert "exactly 1 response, got 3" in (await r.json())["error"]


async def test_frontend_http_client_disconnect_cancels_the_request(http_frontend, service):
    url = _base(http_frontend) + "/v2/models/slow/infer"
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}]}
    session = aiohttp.ClientSession()
    call = asyncio.create_task(session.post(url, json=body))
    try:
        await until(lambda: service.calls >= 1, 20, "the request to reach the routing core")
    finally:
        call.cancel()
        await session.close()
    await until(lambda: service.cancelled == ["slow"], 20, "the routing core's request to be cancelled")


async def test_frontend_http_counts_requests_under_protocol_http(http_frontend):
    body = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [1]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(_base(http_frontend) + "/v2/models/identity/infer", json=body) as r:
            assert r.status == 200
        async with session.post(_base(http_frontend) + "/v2/models/identity/infer", data=b"{") as r:
            assert r.status == 400
        async with session.get(_base(http_frontend) + "/metrics") as r:
            text = await r.text()
    assert 'dyntriton_frontend_requests_total{model="identity",protocol="http"} 1.0' in text
    assert 'dyntriton_frontend_request_failures_total{code="INVALID_ARGUMENT",model="identity",protocol="http"}' in text
