#!/usr/bin/env python3
"""Watch latency of each KV store: time from a put (in another process) to the watcher's event.

    python benchmarks/kv_watch_latency.py [--puts 100]

Starts a throw-away etcd for the etcd row (skipped without the etcd binary). The
writer is a separate process for file and etcd, as a worker would be; for mem the
writer is a task in the same process (mem cannot span processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.etcd import EtcdNotInstalled, run_etcd

WRITER = textwrap.dedent(
    """
    import asyncio, sys, time
    from dynamo_triton.plugins import make_plugin_manager

    async def main():
        store = make_plugin_manager().kv_store(sys.argv[1], **dict(a.split("=", 1) for a in sys.argv[3:]))
        for i in range(int(sys.argv[2])):
            await store.put(f"bench/{i}", repr(time.time()).encode())
            await asyncio.sleep(0.02)
        await store.close()

    asyncio.run(main())
    """
)


async def measure(name: str, puts: int, **options: str) -> list[float]:
    store = make_plugin_manager().kv_store(name, **options)
    latencies: list[float] = []
    async with store.watch("bench/") as watch:
        if name == "mem":

            async def writer() -> None:
                for i in range(puts):
                    await store.put(f"bench/{i}", repr(time.time()).encode())
                    await asyncio.sleep(0.02)

            task = asyncio.create_task(writer())
        else:
            args = [f"{k}={v}" for k, v in options.items()]
            process = subprocess.Popen([sys.executable, "-c", WRITER, name, str(puts), *args])
        async for event in watch:
            if event.value is not None:
                latencies.append(time.time() - float(event.value))
            if len(latencies) >= puts:
                break
        if name == "mem":
            await task
        else:
            process.wait(30)
    await store.close()
    return latencies


def report(name: str, latencies: list[float]) -> None:
    ms = sorted(value * 1000 for value in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:<5} events {len(ms):>4}   median {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--puts", type=int, default=100)
    args = parser.parse_args()
    report("mem", asyncio.run(measure("mem", args.puts, space="bench")))
    with tempfile.TemporaryDirectory() as root:
        report("file", asyncio.run(measure("file", args.puts, root=root)))
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(run_etcd())
        except EtcdNotInstalled as exc:
            print(f"etcd  skipped: {exc}")
            return
        report("etcd", asyncio.run(measure("etcd", args.puts, endpoints=url)))


if __name__ == "__main__":
    main()
