"""Draining frontends on a shared port: the listener goes first, clients leave, nothing is cancelled.

The rolling restart itself (two processes, SIGHUP, load) is in tests/fault/test_fault_rolling_restart.py;
here each piece is checked in one process: the /proc socket helpers, a ModelStreamInfer stream that
outlives the drain timeout, and REST's ``Connection: close`` while draining.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket

import grpc
import numpy as np
import pytest
from dyntriton_frontend_kserve_grpc import drain
from dyntriton_frontend_kserve_grpc.options import GrpcSettings
from tritonclient.grpc import service_pb2, service_pb2_grpc

from dynamo_triton.frontend import FrontendSettings


def test_drain_sees_its_listener_and_connections_and_stops_listening():
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                found = drain.scan(port)
                assert found.listening_fds == (listener.fileno(),)
                assert found.connections == 1  # the accepted side; the client's local port is another
                assert not drain.others_listen(port)

                assert drain.stop_listening(port) == 1
                with pytest.raises(ConnectionRefusedError):  # out of the SO_REUSEPORT group: nobody listens
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                client.sendall(b"still")  # the accepted connection keeps working
                assert accepted.recv(5) == b"still"
                assert drain.scan(port).listening_fds == ()  # grpc core's fd, shut, is no longer listening


def _request(model: str, request_id: str) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    message.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
    message.raw_input_contents.append(np.int32(5).tobytes())
    return message


async def test_a_stream_open_at_the_drain_timeout_answers_what_it_read_then_ends_unavailable(service, monkeypatch):
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    monkeypatch.setattr(drain, "others_listen", lambda port: True)  # as if a new frontend shared the port
    settings = GrpcSettings(host="127.0.0.1", port=0, reuse_port=True, max_connection_age=60, drain_timeout=0.3)
    frontend = KServeGrpcFrontend(settings, service)
    await frontend.start()
    stopping = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            await stream.write(_request("identity", "a"))
            assert (await stream.read()).infer_response.id == "a"
            await stream.write(_request("gated", "b"))  # read, answered only when the test opens its gate
            async with asyncio.timeout(10):
                while "b" not in service.gates:
                    await asyncio.sleep(0.01)
            stopping = asyncio.create_task(frontend.stop(grace=5))
            async with asyncio.timeout(10):
                while frontend._streams:  # the drain timeout passed: the stream stopped reading
                    await asyncio.sleep(0.01)
            service.gates["b"].set()
            assert (await stream.read()).infer_response.id == "b"
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.read()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "frontend is shutting down" in (ended.value.details() or "")
        await stopping
    finally:
        if stopping is None:
            await frontend.stop(grace=0.5)


async def test_a_draining_http_frontend_answers_with_connection_close_and_waits_for_its_clients(service):
    from dyntriton_frontend_http.server import HttpFrontend

    settings = FrontendSettings(host="127.0.0.1", port=0, reuse_port=True, max_connection_age=30)
    frontend = HttpFrontend(settings, service)
    await frontend.start()
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [5]}]})

    def infer(connection: http.client.HTTPConnection) -> http.client.HTTPResponse:
        connection.request("POST", "/v2/models/identity/infer", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response

    connection = http.client.HTTPConnection("127.0.0.1", frontend.port, timeout=10)
    try:
        first = await asyncio.to_thread(infer, connection)
        assert first.status == 200 and first.getheader("Connection") != "close"
        stopping = asyncio.create_task(frontend.stop())
        async with asyncio.timeout(10):
            while frontend._runner is not None and frontend._runner.sites:
                await asyncio.sleep(0.01)
        with pytest.raises(ConnectionRefusedError):  # no longer listening
            await asyncio.to_thread(socket.create_connection, ("127.0.0.1", frontend.port), 5)
        last = await asyncio.to_thread(infer, connection)  # the kept-alive connection is still served
        assert last.status == 200 and last.getheader("Connection") == "close"
        await asyncio.wait_for(stopping, 10)  # its only client left: no need to wait out the 30 s
    finally:
        connection.close()
        await frontend.stop()
