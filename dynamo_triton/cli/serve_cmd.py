"""``dyntriton serve``: a frontend and its workers in one command, stopped together.

With ``--store-kv mem`` (or ``--in-process``) the worker runs inside this
process and requests skip the network (``inproc`` transport). Otherwise each of
the ``--workers N`` workers is a ``dyntriton worker`` child process, exactly what
you would run by hand on other hosts.

The summary is printed once this serve's own workers serve every model asked
(every model of the repository when none is named). Child processes that fail while
serving are restarted with backoff (``--restart on-failure``, see ``supervisor.py``); a
worker runs in its own process group, killed whole (Triton's stubs included) before
its restart. SIGHUP replaces the extra frontend processes one by one, each new one
serving on the shared ports before the old one drains (``--frontends N``).

Exit codes: 0 after SIGINT or SIGTERM, 3 when it could not start (a worker failed before
registering, a port is taken...), 4 when no worker is left while serving (``--restart no``),
5 when a child crash-loops (5 failures within 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import click

from dynamo_triton.cli.children import (
    forwarded_options,
    own_group_dying_with_parent,
    ready,
    spawn_ready,
    stop_children,
)
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.exits import EXIT_START_FAILED, starting
from dynamo_triton.cli.frontend_cmd import (
    FORWARDED,
    check_tls_files,
    extra_frontend_argv,
    frontend_config,
    listeners,
    share_token,
)
from dynamo_triton.cli.options import (
    backend_options,
    format_ports,
    frontend_options,
    model_control_option,
    store_options,
    store_settings,
    transport_options,
    worker_options,
)
from dynamo_triton.cli.serve_summary import Ownership, print_summary, served_by_own
from dynamo_triton.cli.supervisor import Child, RestartPolicy, Supervisor, exit_description
from dynamo_triton.cli.worker_cmd import backend_settings
from dynamo_triton.errors import DyntritonError
from dynamo_triton.plugins import Plugins
from dynamo_triton.runtime.control_records import reports_prefix
from dynamo_triton.runtime.launch import FrontendStack, Shutdown, WorkerStack, start_frontend, start_worker
from dynamo_triton.runtime.worker import WorkerSettings
from dynamo_triton.transport import TransportSettings

__all__ = ["serve"]

log = logging.getLogger("dyntriton.serve")

#: Seconds ``serve`` waits for its workers to register every model before giving up.
STARTUP_TIMEOUT = 300.0


@click.command()
@store_options
@backend_options
@worker_options
@frontend_options
@transport_options
@model_control_option
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Worker processes to start.")
@click.option(
    "--frontends",
    type=click.IntRange(min=1),
    default=1,
    help="Frontend processes sharing the gRPC and HTTP ports (SO_REUSEPORT); more than 1 needs a shared store.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Run one worker inside this process (no sockets between frontend and worker). Implied by --store-kv mem.",
)
@click.option(
    "--restart",
    type=click.Choice(["on-failure", "no"]),
    default="on-failure",
    show_default=True,
    envvar="DYN_RESTART",
    help="Restart worker and frontend processes that fail, with backoff; 5 failures within 60 s stop serve "
    "(exit 5). With 'no', serve exits 4 once no worker is left.",
)
@click.pass_context
def serve(ctx: click.Context, **options: Any) -> None:
    """Run a KServe frontend and workers for the models of a Triton model repository.

    Exit codes: 0 stopped by SIGINT/SIGTERM; 3 could not start; 4 no worker left while serving
    (--restart no); 5 a process crash-looped. SIGHUP restarts the extra frontend processes without
    losing a request (--frontends N).
    """
    own_namespace = ctx.get_parameter_source("namespace") is click.core.ParameterSource.DEFAULT
    if own_namespace:  # two serves on one host (one file store) must not route to each other's workers
        options["namespace"] = serve_namespace()
    frontend_argv = [
        "frontend",
        *forwarded_options(ctx, FORWARDED, {"namespace": options["namespace"]}),
        "--reuse-port",
    ]
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_serve(plugins_from(ctx), ServeOptions(**options), frontend_argv, own_namespace=own_namespace))


def serve_namespace() -> str:
    """The discovery namespace of a ``serve`` given none: its own, so that its frontend sees only its workers.

    ``worker`` and ``frontend`` keep the shared default (``dynamo``); to add workers to a ``serve``,
    give both the same ``--namespace`` (``DYN_NAMESPACE``).
    """
    return f"dynamo-serve-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ServeOptions:
    """Every option of ``serve``, typed (the click options are the source of names and defaults)."""

    store_kv: str
    etcd_endpoints: str | None
    file_kv_root: str | None
    namespace: str
    backend: str
    models: tuple[str, ...]
    model_repository: str
    backend_directory: str | None
    log_verbose: int
    model_load_retries: int
    triton_home: str | None
    transport: str
    worker_host: str
    worker_port: tuple[int, int]
    lease_ttl: float
    system_host: str
    system_port: int
    grpc_host: str
    grpc_port: int
    http_host: str
    http_port: int
    http_max_input_size: int
    router: str
    server_name: str
    stream_window: int
    max_message_size: int
    max_connection_age: float
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    http_tls: bool
    workers: int
    frontends: int
    in_process: bool
    restart: str
    transport_tls_cert: str | None = None
    transport_tls_key: str | None = None
    transport_tls_ca: str | None = None
    transport_token: str | None = None
    transport_heartbeat: float = 1.0
    grpc_restricted_protocol: tuple[str, ...] = ()
    http_restricted_api: tuple[str, ...] = ()
    model_control: str = "none"
    max_inflight: int = 0
    max_queue: int = 10_000

    def worker_argv(self, index: int) -> list[str]:
        """The ``dyntriton worker`` command line for child ``index``."""
        argv = [sys.executable, "-m", "dynamo_triton", "worker", "--store-kv", self.store_kv]
        if self.etcd_endpoints:
            argv += ["--etcd-endpoints", self.etcd_endpoints]
        if self.file_kv_root:
            argv += ["--file-kv-root", self.file_kv_root]
        argv += ["--namespace", self.namespace, "--backend", self.backend]
        argv += ["--model-repository", self.model_repository]
        for model in self.models:
            argv += ["--model", model]
        if self.backend_directory:
            argv += ["--backend-directory", self.backend_directory]
        if self.triton_home:
            argv += ["--triton-home", self.triton_home]
        argv += ["--log-verbose", str(self.log_verbose), "--model-load-retries", str(self.model_load_retries)]
        argv += ["--transport", self.transport, "--lease-ttl", str(self.lease_ttl)]
        argv += ["--worker-host", self.worker_host, "--worker-port", format_ports(self.worker_port)]
        argv += ["--system-host", self.system_host]
        argv += ["--system-port", str(self.system_port + index if self.system_port else 0)]
        argv += ["--model-control", self.model_control]
        for flag, path in (
            ("--transport-tls-cert", self.transport_tls_cert),
            ("--transport-tls-key", self.transport_tls_key),
            ("--transport-tls-ca", self.transport_tls_ca),
        ):
            if path:
                argv += [flag, path]
        return argv  # the transport token reaches the workers through their environment (share_token)

    def check(self) -> None:
        """Reject combinations that cannot work, as usage errors."""
        in_process = self.in_process or self.store_kv == "mem"
        if in_process and self.workers > 1:
            raise click.UsageError("--workers > 1 needs separate processes: use a shared store (file or etcd)")
        if in_process and self.frontends > 1:
            raise click.UsageError(
                "--frontends > 1 needs separate processes that share a store: use --store-kv file or etcd"
            )
        if self.system_port and self.system_port + self.workers - 1 > 65535:
            raise click.UsageError(
                f"--system-port {self.system_port} gives worker i port {self.system_port} + i, past 65535 for "
                f"{self.workers} workers: pick a lower port, or 0 for any free port"
            )
        first, last = self.worker_port
        if first and last - first + 1 < self.workers:
            raise click.UsageError(
                f"--worker-port {format_ports(self.worker_port)} has fewer ports than --workers {self.workers}: "
                "give a range with a port per worker (e.g. 9000-9007), or 0 for any free port"
            )


async def _serve(
    plugins: Plugins, opts: ServeOptions, frontend_argv: list[str], *, own_namespace: bool = False
) -> None:
    opts.check()
    in_process = opts.in_process or opts.store_kv == "mem"
    config = frontend_config(
        namespace=opts.namespace,
        grpc_host=opts.grpc_host,
        grpc_port=opts.grpc_port,
        http_host=opts.http_host,
        http_port=opts.http_port,
        http_max_input_size=opts.http_max_input_size,
        router=opts.router,
        server_name=opts.server_name,
        stream_window=opts.stream_window,
        max_message_size=opts.max_message_size,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        tls_client_ca=opts.tls_client_ca,
        http_tls=opts.http_tls,
        reuse_port=opts.frontends > 1,
        max_connection_age=opts.max_connection_age,
        transport_tls_cert=opts.transport_tls_cert,
        transport_tls_key=opts.transport_tls_key,
        transport_tls_ca=opts.transport_tls_ca,
        transport_token=opts.transport_token,
        transport_heartbeat=opts.transport_heartbeat,
        grpc_restricted_protocol=opts.grpc_restricted_protocol,
        http_restricted_api=opts.http_restricted_api,
        max_inflight=opts.max_inflight,
        max_queue=opts.max_queue,
    )
    config = replace(config, log_verbose=opts.log_verbose)  # what LogSettings answers before an update
    if in_process:  # no request plane on the network: nothing for TLS or a token to protect
        config = replace(config, transport=TransportSettings(heartbeat=opts.transport_heartbeat))
    share_token(opts.transport_token)
    with starting():
        check_tls_files(config)  # first: a wrong file is found before any store, port or worker
        store = plugins.kv_store(opts.store_kv, **store_settings(opts.store_kv, opts.etcd_endpoints, opts.file_kv_root))
    shutdown = Shutdown()
    workers: list[Child] = []
    frontends: list[Child] = []
    frontend: FrontendStack | None = None
    local: WorkerStack | None = None
    try:
        with starting():
            frontend = await start_frontend(plugins, store, config)
            argv = extra_frontend_argv(frontend_argv, frontend)
            for index in range(1, opts.frontends):
                frontends.append(Child(f"frontend {index}", partial(spawn_ready, argv)))
                await frontends[-1].start()
            if in_process:
                local = await start_worker(
                    plugins,
                    store,
                    backend=opts.backend,
                    backend_settings=backend_settings(
                        opts.model_repository,
                        opts.backend_directory,
                        opts.log_verbose,
                        opts.triton_home,
                        opts.model_load_retries,
                    ),
                    transport="inproc" if opts.transport == "tcp" else opts.transport,
                    settings=WorkerSettings(
                        namespace=opts.namespace,
                        models=opts.models,
                        lease_ttl=opts.lease_ttl,
                        model_control=opts.model_control,
                    ),
                    system_host=opts.system_host,
                    system_port=opts.system_port,
                )
                owner = Ownership(frozenset({os.getpid()}))
            else:
                for index in range(opts.workers):
                    workers.append(Child(f"worker {index}", partial(_spawn_worker, opts.worker_argv(index)), True))
                    await workers[-1].start()
            processes = [child.process for child in workers if child.process is not None]
            if not in_process:
                owner = Ownership(frozenset(process.pid for process in processes))
            workers_count = 1 if in_process else opts.workers
            if opts.model_control == "explicit" and not opts.models:  # nothing to serve yet: wait for reports
                await _wait_until_reported(store, opts.namespace, processes, workers_count)
                own = {}
            else:
                own = await _wait_until_served(frontend, owner, processes, workers_count, opts.models)
        mode = "in-process worker" if in_process else f"{opts.workers} worker process(es)"
        if opts.model_control == "explicit":
            mode += "; model control explicit (dyntriton model load NAME / unload NAME)"
        where = f"store {opts.store_kv} (namespace {opts.namespace})"
        footer = f"{listeners(config, frontend)}; {where}; {mode}; pid {os.getpid()}. Ctrl-C stops."
        print_summary(frontend.service.models(), own, footer)
        shutdown.started()
        supervisor = Supervisor(
            [*workers, *frontends], RestartPolicy(restart=opts.restart), on_restart=_Comeback(frontend).watch
        )
        await _supervise(supervisor, shutdown, frontends)
    finally:
        shutdown.close()
        await stop_children([child.process for child in frontends if child.process is not None])
        await stop_children([child.process for child in workers if child.process is not None])
        for child in workers:
            child.kill_group()
        if local is not None:
            await local.stop()
        if frontend is not None:
            await frontend.stop()
        if own_namespace:  # nobody else uses it: leave no control or settings records behind
            await _forget_namespace(store, opts.namespace)
        await store.close()


async def _wait_until_served(
    frontend: FrontendStack,
    owner: Ownership,
    children: list[asyncio.subprocess.Process],
    workers: int,
    models: tuple[str, ...],
) -> dict[str, int]:
    """Wait (on table changes and child exits) until this serve's own workers serve every model.

    :returns: own instances per model (see :func:`served_by_own`).
    :raises DyntritonError: a worker exited first (exit code 3), or the deadline passed.
    """
    changed = asyncio.Event()
    frontend.table.subscribe(changed.set)
    exits = {asyncio.ensure_future(child.wait()): index for index, child in enumerate(children)}
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            own = served_by_own(frontend.table.all_instances(), owner, workers, models)
            if own is not None:
                return own
            for task, index in exits.items():
                if task.done():
                    child = children[index]
                    error = DyntritonError(
                        f"worker {index} (pid {child.pid}) {exit_description(task.result())} before it registered "
                        "its models; its own error is printed above",
                        status="UNAVAILABLE",
                    )
                    error.exit_code = EXIT_START_FAILED  # type: ignore[attr-defined]
                    raise error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(models) - set(frontend.table.model_names())) or "some models"
                raise DyntritonError(
                    f"the workers did not register {missing} within {STARTUP_TIMEOUT:g} s",
                    hint="read the workers' log lines above; a model may still be loading",
                    status="DEADLINE_EXCEEDED",
                )
            changed.clear()
            waiter = asyncio.ensure_future(changed.wait())
            await asyncio.wait({waiter, *exits}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        for task in exits:
            task.cancel()


async def _forget_namespace(store: Any, namespace: str) -> None:
    """Delete what is left under this serve's own namespace (best effort: the store may be gone)."""
    with contextlib.suppress(Exception):
        for entry in await store.list(f"dyntriton/v1/{namespace}/"):
            await store.delete(entry.key)


async def _wait_until_reported(
    store: Any, namespace: str, children: list[asyncio.subprocess.Process], workers: int
) -> None:
    """With explicit model control and no ``--model``: wait until ``workers`` repository reports are in
    the store (the workers are up, with nothing loaded), or a worker exits (exit code 3)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while len(await store.list(reports_prefix(namespace))) < workers:
        for index, child in enumerate(children):
            if child.returncode is not None:
                error = DyntritonError(
                    f"worker {index} (pid {child.pid}) {exit_description(child.returncode)} before it started; "
                    "its own error is printed above",
                    status="UNAVAILABLE",
                )
                error.exit_code = EXIT_START_FAILED  # type: ignore[attr-defined]
                raise error
        if time.monotonic() > deadline:
            raise DyntritonError(f"the workers did not start within {STARTUP_TIMEOUT:g} s", status="DEADLINE_EXCEEDED")
        await asyncio.sleep(0.1)  # polling the store: a report carries no pid to wait on


async def _spawn_worker(argv: list[str]) -> asyncio.subprocess.Process:
    """A worker child in its own process group (killed whole, stubs included) that dies with serve."""
    return await asyncio.create_subprocess_exec(*argv, preexec_fn=own_group_dying_with_parent)


async def _supervise(supervisor: Supervisor, shutdown: Shutdown, frontends: list[Child]) -> None:
    """Supervise until SIGINT/SIGTERM; SIGHUP replaces the extra frontend processes one at a time."""
    loop = asyncio.get_running_loop()
    rolling: set[asyncio.Task[None]] = set()

    def roll() -> None:
        if rolling:
            log.warning("SIGHUP: a rolling restart of the frontends is already running")
            return
        log.info("SIGHUP: replacing %d frontend process(es) one at a time", len(frontends))
        task = asyncio.ensure_future(_roll_frontends(supervisor, frontends))
        rolling.add(task)
        task.add_done_callback(rolling.discard)

    stopped: asyncio.Future[Any] = asyncio.ensure_future(shutdown.wait())
    loop.add_signal_handler(signal.SIGHUP, roll)
    try:
        await supervisor.run(stopped)
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        stopped.cancel()
        for task in rolling:
            task.cancel()


async def _roll_frontends(supervisor: Supervisor, frontends: list[Child]) -> None:
    for child in frontends:
        try:
            await supervisor.replace(child, ready)
        except Exception as exc:  # the old process keeps serving
            log.error("could not replace %s: %s", child.name, exc)
            return


class _Comeback:
    """Logs when a restarted worker registers its models again (how long the capacity was missing)."""

    def __init__(self, frontend: FrontendStack):
        self._table = frontend.table
        self._pending: dict[int, tuple[str, float]] = {}
        self._table.subscribe(self._check)

    def watch(self, child: Child) -> None:
        if child.own_group and child.process is not None:
            self._pending[child.process.pid] = (child.name, time.monotonic())

    def _check(self) -> None:
        if not self._pending:
            return
        pids = {inst.card.worker.get("pid") for inst in self._table.all_instances()}
        for pid in [pid for pid in self._pending if pid in pids]:
            name, since = self._pending.pop(pid)
            log.warning("%s (pid %d) serves again, %.1f s after its restart", name, pid, time.monotonic() - since)
