#!/usr/bin/env python3
"""Request-plane round trips, side by side in one run: inproc vs tcp vs NATS (ratios, never pass/fail).

An echo handler answers each request with its payload. For 64 B and 1 MiB payloads
at concurrency 1 and 8 (closed loop: each caller sends its next request when the
last one answered) it measures, for

- ``inproc``: client and server in this event loop, no sockets;
- ``tcp-1loop``: tcp over loopback, client and server in this event loop;
- ``tcp-2proc``: tcp over loopback, the server in a child process (the real deployment shape);
- ``nats-2proc``: the nats transport, the server in a child process, through a nats-server
  (``NATS_SERVER`` if set, else one this script starts on a free port; skipped, saying how to
  install it, when there is none);

round trips per second, p50 and p99 latency, and prints one table with each column's
throughput as a fraction of inproc, then nats against tcp (both 2proc) case by case.

    python benchmarks/bench_transport.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.nats import NatsNotInstalled, run_nats
from dynamo_triton.transport import TransportClient, TransportRequest

CASES = [(64, 1), (64, 8), (1 << 20, 1), (1 << 20, 8)]

_CHILD = """
import asyncio, sys
from dynamo_triton.plugins import make_plugin_manager

async def echo(request):
    yield request.payload

async def main():
    server = make_plugin_manager().transport(sys.argv[1]).server("127.0.0.1", 0)
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
    kind = name.partition("-")[0]
    transport = plugins.transport(kind)
    child = server = None
    if name.endswith("-2proc"):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, kind], stdout=subprocess.PIPE, text=True)
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


@contextlib.contextmanager
def nats_server() -> Iterator[str | None]:
    """``NATS_SERVER`` if set, else a nats-server of our own; None (and why, printed) when there is none."""
    if os.environ.get("NATS_SERVER"):
        yield os.environ["NATS_SERVER"]
        return
    try:
        with run_nats() as server:
            os.environ["NATS_SERVER"] = server.url  # the child and this process's client read it
            try:
                yield server.url
            finally:
                del os.environ["NATS_SERVER"]
    except NatsNotInstalled as exc:
        print(f"nats-2proc skipped: {exc}")
        yield None


def label(size: int) -> str:
    return "64 B" if size == 64 else f"{size >> 20} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="load duration per case")
    args = parser.parse_args()
    columns = ["inproc", "tcp-1loop", "tcp-2proc"]
    with nats_server() as url:
        if url is not None:
            columns.append("nats-2proc")
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
        print(f"{label(size):>8} {concurrency:>4} |" + "|".join(cells))
    if "nats-2proc" not in results:
        return
    print()
    print("nats-2proc vs tcp-2proc (both: server in a child process; nats adds the nats-server hop)")
    rps_head = f"{'tcp rps':>8} {'nats rps':>8} {'rps ratio':>9}"
    p50_head = f"{'tcp p50':>8} {'nats p50':>8} {'p50 ratio':>9}"
    print(f"{'payload':>8} {'conc':>4} | {rps_head} | {p50_head}")
    for size, concurrency in CASES:
        tcp, nats = results["tcp-2proc"][(size, concurrency)], results["nats-2proc"][(size, concurrency)]
        print(
            f"{label(size):>8} {concurrency:>4} | {tcp['rps']:8.0f} {nats['rps']:8.0f} {nats['rps'] / tcp['rps']:9.2f}"
            f" | {tcp['p50']:8.3f} {nats['p50']:8.3f} {nats['p50'] / tcp['p50']:9.2f}"
        )


if __name__ == "__main__":
    main()
