#!/usr/bin/env python3
"""Request-plane round trips, side by side in one run: inproc vs tcp (ratios, never pass/fail).

An echo handler answers each request with its payload. For 64 B and 1 MiB payloads
at concurrency 1 and 8 (closed loop: each caller sends its next request when the
last one answered) it measures, for

- ``inproc``: client and server in this event loop, no sockets;
- ``tcp-1loop``: tcp over loopback, client and server in this event loop;
- ``tcp-2proc``: tcp over loopback, the server in a child process (the real deployment shape);

round trips per second, p50 and p99 latency, and prints one table with each tcp
column's throughput as a fraction of inproc.

    python benchmarks/bench_transport.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator

from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.transport import TransportClient, TransportRequest

CASES = [(64, 1), (64, 8), (1 << 20, 1), (1 << 20, 8)]

_CHILD = """
import asyncio
from dynamo_triton.plugins import make_plugin_manager

async def echo(request):
    yield request.payload

async def main():
    server = make_plugin_manager().transport("tcp").server("127.0.0.1", 0)
    print(await server.start(echo), flush=True)
    await asyncio.sleep(1e9)

asyncio.run(main())
"""


async def echo(request: TransportRequest) -> AsyncIterator[bytes]:
    yield request.payload


async def load(client: TransportClient, address: str, size: int, concurrency: int, seconds: float) -> dict:
    """Closed-loop echo calls for ``seconds``; returns rps, p50 and p99 in ms."""
    payload = bytes(size)
    latencies: list[float] = []

    async def one() -> None:
        async for chunk in client.call(address, "echo", payload):
            assert len(chunk) == size

    for _ in range(5):  # warm up: connections, caches
        await one()
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1e3,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
    }


async def run_column(name: str, seconds: float) -> dict[tuple[int, int], dict]:
    plugins = make_plugin_manager()
    transport = plugins.transport("inproc" if name == "inproc" else "tcp")
    child = server = None
    if name == "tcp-2proc":
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        address = child.stdout.readline().strip()
    else:
        server = transport.server("127.0.0.1", 0)
        address = await server.start(echo)
    client = transport.client()
    try:
        return {case: await load(client, address, *case, seconds) for case in CASES}
    finally:
        await client.close()
        if server is not None:
            await server.stop(grace=0)
        if child is not None:
            child.kill()
            child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="load duration per case")
    args = parser.parse_args()
    columns = ["inproc", "tcp-1loop", "tcp-2proc"]
    results = {name: asyncio.run(run_column(name, args.seconds)) for name in columns}
    header = f"{'payload':>8} {'conc':>4} |" + "|".join(f" {name:^31} " for name in columns)
    print(header)
    print(f"{'':>8} {'':>4} |" + "|".join(f" {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>5} " for _ in columns))
    print("-" * len(header))
    for size, concurrency in CASES:
        base = results["inproc"][(size, concurrency)]["rps"]
        cells = []
        for name in columns:
            r = results[name][(size, concurrency)]
            cells.append(f" {r['rps']:8.0f} {r['p50']:7.3f} {r['p99']:7.3f} {r['rps'] / base:5.2f} ")
        label = "64 B" if size == 64 else "1 MiB"
        print(f"{label:>8} {concurrency:>4} |" + "|".join(cells))


if __name__ == "__main__":
    main()
