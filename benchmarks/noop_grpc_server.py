#!/usr/bin/env python3
"""The Python ceiling: a grpc.aio KServe server whose ModelInfer answers at once with a fixed response.

It does nothing a real frontend could skip (no parse, no routing), so its throughput under
h2load is the most any single-process grpc.aio frontend can reach on this machine.

    python benchmarks/noop_grpc_server.py PORT
"""

from __future__ import annotations

import asyncio
import os
import sys

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
from tritonclient.grpc import service_pb2

ANSWER = service_pb2.ModelInferResponse(model_name="identity", model_version="1").SerializeToString()


async def model_infer(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return ANSWER


async def main(port: int) -> None:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    )
    handlers = {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
