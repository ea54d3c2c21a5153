#!/usr/bin/env python3
"""Watch latency of each KV store, and the CPU an idle watcher costs.

    python benchmarks/kv_watch_latency.py [--puts 100] [--idle 10]

Latency is the time from a put (in another process) to the watcher's event; it includes
the put itself, whose median the ``put`` column shows (for file: flock and two fsyncs). Idle CPU
is the watcher process's own CPU time (user + system, every thread) while a watch is
open and nothing changes, over ``--idle`` seconds, as a percentage of one core.

Starts a throw-away etcd for the etcd row (skipped without the etcd binary). The
writer is a separate process for file and etcd, as a worker would be; for mem the
writer is a task in the same process (mem cannot span processes). The ``file/poll``
row is the file store with its polling fallback forced (``watch=poll``), side by side
with the default inotify watch.
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
    import asyncio, statistics, sys, time
    from dynamo_triton.plugins import make_plugin_manager

    async def main():
        store = make_plugin_manager().kv_store(sys.argv[1], **dict(a.split("=", 1) for a in sys.argv[3:]))
        durations = []
        for i in range(int(sys.argv[2])):
            start = time.time()
            await store.put(f"bench/{i}", repr(start).encode())
            durations.append(time.time() - start)
            await asyncio.sleep(0.02)
        await store.close()
        print(statistics.median(durations) * 1000, flush=True)

    asyncio.run(main())
    """
)


async def measure(name: str, puts: int, **options: str) -> tuple[list[float], float | None]:
    """Latencies (s) of ``puts`` events, and the writer's median put time (ms; None for mem)."""
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
            process = subprocess.Popen([sys.executable, "-c", WRITER, name, str(puts), *args], stdout=subprocess.PIPE)
        async for event in watch:
            if event.value is not None:
                latencies.append(time.time() - float(event.value))
            if len(latencies) >= puts:
                break
        put_ms = None
        if name == "mem":
            await task
        else:
            output, _ = process.communicate(timeout=30)
            put_ms = float(output)
    await store.close()
    return latencies, put_ms


async def idle_cpu(name: str, seconds: float, **options: str) -> float:
    """Percent of one core this process spends while a watch on ``name`` is open and idle."""
    store = make_plugin_manager().kv_store(name, **options)
    await store.put("idle/present", b"x")
    async with store.watch("idle/"):
        await asyncio.sleep(0.5)  # let the watch settle (thread pools started, first sweep done)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        used = (time.process_time() - cpu) / (time.monotonic() - wall)
    await store.close()
    return used * 100


def report(name: str, measured: tuple[list[float], float | None], idle: float | None = None) -> None:
    latencies, put_ms = measured
    ms = sorted(value * 1000 for value in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    put_text = f"   put {put_ms:6.2f} ms" if put_ms is not None else " " * 16
    idle_text = f"   idle CPU {idle:5.2f} %" if idle is not None else ""
    print(
        f"{name:<9} events {len(ms):>4}   median {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms"
        f"{put_text}{idle_text}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--puts", type=int, default=100)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle watching per file row (0: skip)")
    args = parser.parse_args()
    report("mem", asyncio.run(measure("mem", args.puts, space="bench")))
    medians: dict[str, float] = {}
    idles: dict[str, float] = {}
    for label, mode in (("file", "auto"), ("file/poll", "poll")):
        with tempfile.TemporaryDirectory() as root:
            measured = asyncio.run(measure("file", args.puts, root=root, watch=mode))
        idle = None
        if args.idle > 0:
            with tempfile.TemporaryDirectory() as root:
                idle = idles[label] = asyncio.run(idle_cpu("file", args.idle, root=root, watch=mode))
        medians[label] = statistics.median(measured[0])
        report(label, measured, idle)
    ratio = f"file poll / inotify: median latency {medians['file/poll'] / medians['file']:.1f}x"
    if idles:
        ratio += f", idle CPU {idles['file/poll'] / max(idles['file'], 1e-9):.1f}x"
    print(ratio)
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(run_etcd())
        except EtcdNotInstalled as exc:
            print(f"etcd  skipped: {exc}")
            return
        report("etcd", asyncio.run(measure("etcd", args.puts, endpoints=url)))


if __name__ == "__main__":
    main()
