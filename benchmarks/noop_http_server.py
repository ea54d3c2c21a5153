#!/usr/bin/env python3
"""The Python REST ceiling: aiohttp on uvloop (the frontend's stack) whose infer route answers at once.

It reads the body and returns a fixed KServe JSON answer (identity of INT32[16]) and the
fixed binary answer of the 1 MiB scenario, doing nothing a real frontend could skip (no
parse, no validation, no routing, no model), so its throughput under h2load is the most
the frontend's HTTP stack can reach on this machine, and its CPU per request the least.

    python benchmarks/noop_http_server.py PORT
"""

from __future__ import annotations

import json
import sys

import numpy as np
import uvloop
from aiohttp import web

_SMALL = np.arange(16, dtype=np.int32)
JSON_ANSWER = json.dumps(
    {
        "model_name": "identity",
        "model_version": "1",
        "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": _SMALL.tolist()}],
    }
).encode()
_HEADER = json.dumps(
    {
        "model_name": "identity",
        "model_version": "1",
        "outputs": [
            {
                "name": "OUTPUT0",
                "datatype": "INT32",
                "shape": [1, 262144],
                "parameters": {"binary_data_size": 1 << 20},
            }
        ],
    }
).encode()
BINARY_ANSWER = _HEADER + bytes(1 << 20)


async def infer(request: web.Request) -> web.Response:
    await request.read()
    if "Inference-Header-Content-Length" in request.headers:
        return web.Response(
            body=BINARY_ANSWER,
            headers={"Inference-Header-Content-Length": str(len(_HEADER)), "Content-Type": "application/octet-stream"},
        )
    return web.Response(body=JSON_ANSWER, content_type="application/json")


async def ready(_request: web.Request) -> web.Response:
    return web.Response()


def main(port: int) -> None:
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/v2/models/{name}/ready", ready)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
