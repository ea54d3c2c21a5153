#!/usr/bin/env python3
"""The Python floor: a grpc.aio server on uvloop whose ModelInfer answers a ready-made identity response.

The answer has the size of the request's tensor (an ``identity`` response for INT32 ``[1, N]``,
made once per request size at start), so it costs what any Python frontend must pay to receive
and send those bytes, and nothing a real frontend could skip: no parse, no routing, no Triton.
Its throughput and CPU per request under h2load are the floor a single-process grpc.aio frontend
on this machine cannot beat.

    python benchmarks/noop_grpc_server.py PORT [ELEMENTS ...]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
import numpy as np
from tritonclient.grpc import service_pb2


def identity_pair(elements: int) -> tuple[int, bytes]:
    """(size of the h2load request for ``elements`` INT32, the serialized identity response)."""
    values = np.arange(elements, dtype=np.int32).tobytes()
    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, elements])
    request.raw_input_contents.append(values)
    response = service_pb2.ModelInferResponse(model_name="identity", model_version="1")
    response.outputs.add(name="OUTPUT0", datatype="INT32", shape=[1, elements])
    response.raw_output_contents.append(values)
    return request.ByteSize(), response.SerializeToString()


async def main(port: int, sizes: list[int]) -> None:
    answers = dict(identity_pair(elements) for elements in sizes)
    fallback = service_pb2.ModelInferResponse(model_name="identity", model_version="1").SerializeToString()

    async def model_infer(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return answers.get(len(request), fallback)

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    )
    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            model_infer, request_deserializer=None, response_serializer=None
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), [int(arg) for arg in sys.argv[2:]] or [16, 262144]))
