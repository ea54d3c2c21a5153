"""``dyntriton serve``: a frontend and its workers in one command, stopped together.

With a process-local store (``--store-kv mem``) or ``--in-process`` the worker runs inside
this process and requests skip the network (an in-process transport: ``inproc``). Otherwise each of
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
    child_env,
    own_group_dying_with_parent,
    ready,
    spawn_ready,
    stop_children,
)
from dynamo_triton.cli.composition import PanelCommand, child_argv, plugin_settings, uses
from dynamo_triton.cli.context import plugins_from, run_service
from dynamo_triton.cli.exits import EXIT_START_FAILED, starting
from dynamo_triton.cli.frontend_cmd import (
    check_tls_files,
    extra_frontend_argv,
    frontend_config,
    listeners,
)
from dynamo_triton.cli.options import (
    backend_options,
    format_ports,
    frontend_options,
    model_control_option,
    store_options,
    trace_options,
    transport_options,
    worker_options,
)
from dynamo_triton.cli.serve_summary import Ownership, print_summary, served_by_own
from dynamo_triton.cli.supervisor import Child, RestartPolicy, Supervisor, exit_description
from dynamo_triton.cli.worker_cmd import store_from
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


@uses("kv-store", "transport", "backend", "frontend", "router")
@click.command(cls=PanelCommand)
@store_options
@backend_options
@worker_options
@frontend_options
@trace_options
@transport_options
@model_control_option
@click.option("--workers", type=click.IntRange(min=1), default=1, help="Worker processes to start.")
@click.option(
    "--frontends",
    type=click.IntRange(min=1),
    default=1,
    help="Frontend processes sharing the frontends' ports (SO_REUSEPORT); more than 1 needs a shared store.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Run one worker inside this process (no sockets between frontend and worker). Implied by a "
    "process-local store (--store-kv mem).",
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
def serve(ctx: click.Context, **values: Any) -> None:
    """Run the frontends (KServe gRPC and HTTP by default) and workers for the models of a Triton model repository.

    Exit codes: 0 stopped by SIGINT/SIGTERM; 3 could not start; 4 no worker left while serving
    (--restart no); 5 a process crash-looped. SIGHUP restarts the extra frontend processes without
    losing a request (--frontends N).
    """
    plugins = plugins_from(ctx)
    own_namespace = ctx.get_parameter_source("namespace") is click.core.ParameterSource.DEFAULT
    if own_namespace:  # two serves on one host (one file store) must not route to each other's workers
        values["namespace"] = ctx.params["namespace"] = serve_namespace()
    plan = ServePlan.of(ctx, plugins, values, own_namespace=own_namespace)
    with contextlib.suppress(asyncio.CancelledError):  # a signal during start-up
        run_service(_serve(plugins, ctx, plan))


def serve_namespace() -> str:
    """The discovery namespace of a ``serve`` given none: its own, so that its frontend sees only its workers.

    ``worker`` and ``frontend`` keep the shared default (``dynamo``); to add workers to a ``serve``,
    give both the same ``--namespace`` (``DYN_NAMESPACE``).
    """
    return f"dynamo-serve-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class ServePlan:
    """What ``serve`` decided from its options before starting anything.

    :param values: click's values of every option (the core's and the plugins').
    :param in_process: one worker in this process (``--in-process``, or a process-local store).
    :param transport: the transport the workers serve on (an in-process one for an in-process worker,
        unless ``--transport`` was given).
    :param own_namespace: the namespace is this serve's own (none was given): forgotten when it stops.
    """

    values: dict[str, Any]
    in_process: bool
    transport: str
    own_namespace: bool = False

    @classmethod
    def of(
        cls, ctx: click.Context, plugins: Plugins, values: dict[str, Any], *, own_namespace: bool = False
    ) -> ServePlan:
        """The plan for this invocation; combinations that cannot work are usage errors."""
        in_process = values["in_process"] or plugins.has_trait("kv-store", values["store_kv"], "process-local")
        transport = values["transport"]
        given = ctx.get_parameter_source("transport") not in (None, click.core.ParameterSource.DEFAULT)
        if in_process and not given:
            transport = next(iter(plugins.names_with_trait("transport", "in-process")), transport)
        workers, frontends = values["workers"], values["frontends"]
        if in_process and workers > 1:
            raise click.UsageError("--workers > 1 needs separate processes: use a shared store (file or etcd)")
        if in_process and frontends > 1:
            raise click.UsageError(
                "--frontends > 1 needs separate processes that share a store: use --store-kv file or etcd"
            )
        system_port = values["system_port"]
        if system_port and system_port + workers - 1 > 65535:
            raise click.UsageError(
                f"--system-port {system_port} gives worker i port {system_port} + i, past 65535 for "
                f"{workers} workers: pick a lower port, or 0 for any free port"
            )
        first, last = values["worker_port"]
        if first and last - first + 1 < workers:
            raise click.UsageError(
                f"--worker-port {format_ports(values['worker_port'])} has fewer ports than --workers {workers}: "
                "give a range with a port per worker (e.g. 9000-9007), or 0 for any free port"
            )
        return cls(values, in_process, transport, own_namespace)

    def worker_argv(self, ctx: click.Context, plugins: Plugins, index: int, env: dict[str, str]) -> list[str]:
        """The ``dyntriton worker`` command line of child ``index``: this invocation's values of every option
        ``worker`` has (the plugins' included), with worker ``index``'s system port."""
        from dynamo_triton.cli.main import core_command

        system_port = self.values["system_port"]
        overrides = {"system_port": system_port + index if system_port else 0}
        argv = child_argv(ctx, core_command("worker", plugins), overrides, env=env)
        return [sys.executable, "-m", "dynamo_triton", "worker", *argv]


async def _serve(plugins: Plugins, ctx: click.Context, plan: ServePlan) -> None:
    values, in_process = plan.values, plan.in_process
    config = frontend_config(plugins, values, reuse_port=values["frontends"] > 1)
    config = replace(config, log_verbose=values["log_verbose"])  # what LogSettings answers before an update
    if in_process:  # no request plane on the network: nothing for TLS or a token to protect
        plain = TransportSettings(heartbeat=values["transport_heartbeat"])
        config = replace(config, transport=plain, transports={})
    with starting():
        check_tls_files(config)  # first: a wrong file is found before any store, port or worker
        store = store_from(plugins, values)
    shutdown = Shutdown()
    workers: list[Child] = []
    frontends: list[Child] = []
    frontend: FrontendStack | None = None
    local: WorkerStack | None = None
    secrets: dict[str, str] = {}
    try:
        with starting():
            frontend = await start_frontend(plugins, store, config)
            argv, env = extra_frontend_argv(ctx, plugins, frontend)
            for index in range(1, values["frontends"]):
                frontends.append(Child(f"frontend {index}", partial(spawn_ready, argv, env=env)))
                await frontends[-1].start()
            if in_process:
                local = await start_worker(
                    plugins,
                    store,
                    backend=values["backend"],
                    backend_settings=plugin_settings(plugins, "backend", values["backend"], values),
                    transport=plan.transport,
                    settings=WorkerSettings(
                        namespace=values["namespace"],
                        models=values["models"],
                        lease_ttl=values["lease_ttl"],
                        model_control=values["model_control"],
                    ),
                    system_host=values["system_host"],
                    system_port=values["system_port"],
                    trace=config.trace,
                )
                owner = Ownership(frozenset({os.getpid()}))
            else:
                for index in range(values["workers"]):
                    argv = plan.worker_argv(ctx, plugins, index, secrets)
                    workers.append(Child(f"worker {index}", partial(_spawn_worker, argv, secrets), True))
                    await workers[-1].start()
            processes = [child.process for child in workers if child.process is not None]
            if not in_process:
                owner = Ownership(frozenset(process.pid for process in processes))
            count = 1 if in_process else values["workers"]
            if values["model_control"] == "explicit" and not values["models"]:  # nothing to serve yet: wait for reports
                await _wait_until_reported(store, values["namespace"], processes, count)
                own = {}
            else:
                own = await _wait_until_served(frontend, owner, processes, count, values["models"])
        mode = "in-process worker" if in_process else f"{values['workers']} worker process(es)"
        if values["model_control"] == "explicit":
            mode += "; model control explicit (dyntriton model load NAME / unload NAME)"
        where = f"store {values['store_kv']} (namespace {values['namespace']})"
        footer = f"{listeners(config, frontend)}; {where}; {mode}; pid {os.getpid()}. Ctrl-C stops."
        print_summary(frontend.service.models(), own, footer)
        shutdown.started()
        supervisor = Supervisor(
            [*workers, *frontends], RestartPolicy(restart=values["restart"]), on_restart=_Comeback(frontend).watch
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
        if plan.own_namespace:  # nobody else uses it: leave no control or settings records behind
            await _forget_namespace(store, values["namespace"])
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


async def _spawn_worker(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    """A worker child in its own process group (killed whole, stubs included) that dies with serve."""
    return await asyncio.create_subprocess_exec(*argv, preexec_fn=own_group_dying_with_parent, env=child_env(env))


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
