"""Protocol clients of the Frontend contract for the KServe v2 protocols (gRPC and REST).

Each is built as ``Client(port)`` on 127.0.0.1 and speaks the protocol as any client would
(generated KServe stubs over grpc.aio; JSON over aiohttp), so the contract checks the wire, not
a frontend's internals. See :class:`dynamo_triton.testing.frontend_contract.ProtocolClient`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynamo_triton.testing.frontend_contract import ModelDescription, ProtocolError

__all__ = ["KServeGrpcClient", "KServeRestClient"]


class KServeGrpcClient:
    """KServe v2 gRPC (``inference.GRPCInferenceService``)."""

    statuses = {"unknown_model": "NOT_FOUND", "bad_input": "INVALID_ARGUMENT", "unavailable": "UNAVAILABLE"}

    def __init__(self, port: int):
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._grpc, self._pb = grpc, service_pb2
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def _call(self, method: str, request: Any) -> Any:
        try:
            return await getattr(self._stub, method)(request)
        except self._grpc.aio.AioRpcError as exc:
            raise ProtocolError(exc.code().name, exc.details() or "") from exc

    async def live(self) -> bool:
        return bool((await self._call("ServerLive", self._pb.ServerLiveRequest())).live)

    async def ready(self) -> bool:
        return bool((await self._call("ServerReady", self._pb.ServerReadyRequest())).ready)

    async def model_ready(self, model: str) -> bool:
        try:
            return bool((await self._call("ModelReady", self._pb.ModelReadyRequest(name=model))).ready)
        except ProtocolError as exc:
            if exc.status == "NOT_FOUND":
                return False
            raise

    async def metadata(self, model: str) -> ModelDescription:
        answer = await self._call("ModelMetadata", self._pb.ModelMetadataRequest(name=model))
        return ModelDescription(answer.name, [t.name for t in answer.inputs], [t.name for t in answer.outputs])

    def _request(self, model: str, data: np.ndarray, request_id: str) -> Any:
        message = self._pb.ModelInferRequest(model_name=model, id=request_id)
        message.inputs.add(name="INPUT0", datatype="INT32", shape=data.shape)
        message.raw_input_contents.append(np.ascontiguousarray(data, dtype=np.int32).tobytes())
        return message

    @staticmethod
    def _output(response: Any) -> np.ndarray:
        [tensor] = response.outputs
        return np.frombuffer(response.raw_output_contents[0], dtype=np.int32).reshape(tuple(tensor.shape))

    async def infer(self, model: str, data: np.ndarray, *, request_id: str = "") -> np.ndarray:
        return self._output(await self._call("ModelInfer", self._request(model, data, request_id)))

    async def stream(self, model: str, data: np.ndarray) -> list[np.ndarray]:
        call = self._stub.ModelStreamInfer()
        answers = []
        try:
            await call.write(self._request(model, data, "stream"))
            await call.done_writing()
            async for item in call:
                if item.error_message:
                    raise ProtocolError("STREAM_ERROR", item.error_message)
                answers.append(self._output(item.infer_response))
        except self._grpc.aio.AioRpcError as exc:
            raise ProtocolError(exc.code().name, exc.details() or "") from exc
        return answers

    async def close(self) -> None:
        await self._channel.close()


class KServeRestClient:
    """KServe v2 REST (JSON tensors); errors carry the HTTP status as a string (``"404"``)."""

    statuses = {"unknown_model": "404", "bad_input": "400", "unavailable": "503"}

    def __init__(self, port: int):
        self._base = f"http://127.0.0.1:{port}"
        self._session: Any = None

    async def _send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(method, self._base + path, json=body) as response:
                payload = await response.json(content_type=None) if await response.read() else None
                return response.status, payload
        except aiohttp.ClientConnectionError as exc:
            raise ProtocolError("UNREACHABLE", str(exc)) from exc

    async def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = await self._send(method, path, body)
        if status != 200:
            message = payload.get("error", "") if isinstance(payload, dict) else str(payload)
            raise ProtocolError(str(status), message)
        return payload

    async def live(self) -> bool:
        return (await self._send("GET", "/v2/health/live"))[0] == 200

    async def ready(self) -> bool:
        return (await self._send("GET", "/v2/health/ready"))[0] == 200

    async def model_ready(self, model: str) -> bool:
        return (await self._send("GET", f"/v2/models/{model}/ready"))[0] == 200

    async def metadata(self, model: str) -> ModelDescription:
        answer = await self._ok("GET", f"/v2/models/{model}")
        return ModelDescription(
            answer["name"], [t["name"] for t in answer["inputs"]], [t["name"] for t in answer["outputs"]]
        )

    async def infer(self, model: str, data: np.ndarray, *, request_id: str = "") -> np.ndarray:
        body = {
            "id": request_id,
            "inputs": [
                {"name": "INPUT0", "shape": list(data.shape), "datatype": "INT32", "data": data.ravel().tolist()}
            ],
        }
        answer = await self._ok("POST", f"/v2/models/{model}/infer", body)
        [output] = answer["outputs"]
        return np.array(output["data"], dtype=np.int32).reshape(output["shape"])

    async def stream(self, model: str, data: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError("KServe v2 REST has no streaming of tensor responses (declare no STREAMING)")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
