"""The core's own click options shared by ``serve``, ``worker``, ``frontend`` and ``store``.

Plugin options are not here: each plugin declares its settings (:mod:`dynamo_triton.settings`)
and :mod:`dynamo_triton.cli.composition` adds them to the commands that use that kind of plugin.
Every option here carries the ``--help`` panel it shows in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from dynamo_triton.runtime.tracing import TraceConfig

__all__ = [
    "PORT",
    "PortRange",
    "advertise_host_option",
    "backend_options",
    "format_ports",
    "frontend_options",
    "model_control_option",
    "store_choice_options",
    "store_choice_overrides",
    "store_options",
    "transport_options",
    "worker_options",
]

F = TypeVar("F", bound=Callable[..., Any])


class PortRange(click.ParamType):
    """A port or an inclusive range ``FIRST-LAST``, as ``(first, last)``; ``0`` means any free port."""

    name = "PORT|FIRST-LAST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        first, _, last = text.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            self.fail(f"{text!r} is not a port or a range like 9000-9010", param, ctx)
        if not (0 <= low <= high <= 65535) or (low == 0 and high != 0):
            self.fail(f"{text!r} is not a port range within 1-65535 (or 0 for any free port)", param, ctx)
        return low, high

    def format_value(self, value: tuple[int, int]) -> str:
        """The value as this type reads it back (for a child's command line)."""
        return format_ports(value)


#: A TCP port: 0-65535, 0 meaning any free port (click says "x is not in the range 0<=x<=65535").
PORT = click.IntRange(0, 65535)


def format_ports(ports: tuple[int, int]) -> str:
    """``(9000, 9010)`` as ``9000-9010``, ``(9000, 9000)`` as ``9000``: how ``--worker-port`` reads it."""
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


def _apply(options: list[Callable[[F], F]], panel: str) -> Callable[[F], F]:
    """One decorator adding ``options``, each shown in ``--help`` panel ``panel``."""

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
            param = func.__click_params__[-1]  # type: ignore[attr-defined]
            if not hasattr(param, "dyntriton_panel"):
                param.dyntriton_panel = panel
        return func

    return decorate


_STORE_KV_HELP = "Key-value store for discovery (see `dyntriton plugins list`): file, etcd, mem, nats, ..."


def _named(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """A plugin choice must name one: with no default plugin registered for its kind, it must be given."""
    if not value:
        flag = max(param.opts, key=len)
        raise click.UsageError(f"give {flag} NAME: no plugin registers itself as the default (dyntriton plugins list)")
    return value


def _choice(flag: str, *, envvar: str | None = None, help: str) -> Callable[[F], F]:
    """An option naming a plugin; its default is the plugin registered with the trait ``default`` (set per
    invocation by :func:`dynamo_triton.cli.composition.with_plugin_options`: the core names no plugin)."""
    return click.option(flag, envvar=envvar, show_envvar=envvar is not None, default=None, callback=_named, help=help)


#: The store a command talks to (``dyntriton store``'s group option); the store's own options are its plugin's.
store_choice_options = _apply(
    [_choice("--store-kv", envvar="DYN_STORE_KV", help=_STORE_KV_HELP)],
    "Store",
)

#: The same option on a ``store`` sub-command, overriding the group's when given.
store_choice_overrides = _apply(
    [click.option("--store-kv", default=None, help="Which KV store (may also be given before the sub-command).")],
    "Store",
)

store_options = _apply(
    [
        _choice("--store-kv", envvar="DYN_STORE_KV", help=_STORE_KV_HELP),
        click.option(
            "--namespace",
            envvar="DYN_NAMESPACE",
            default="dynamo",
            show_envvar=True,
            help="Discovery namespace; frontends see only workers of the same namespace.",
        ),
    ],
    "Store",
)

backend_options = _apply(
    [
        _choice("--backend", help="Backend plugin that runs the models."),
        click.option(
            "--model",
            "--model-name",
            "models",
            multiple=True,
            help="Model to load (repeatable). Default: every model in the repository.",
        ),
    ],
    "Backend (every backend)",
)

#: The request plane's choice (``worker``, ``serve``); its settings are the transport plugins' (and the
#: common TransportSettings), on every command that has a request plane.
transport_options = _apply(
    [_choice("--transport", help="Request plane between frontend and workers (a transport plugin).")],
    "Request plane (every transport)",
)

worker_options = _apply(
    [
        click.option(
            "--worker-host",
            "--host",
            "worker_host",
            envvar="DYN_WORKER_HOST",
            default="127.0.0.1",
            show_envvar=True,
            help="Interface the worker's transport server binds (0.0.0.0: every interface; frontends on "
            "other hosts need that).",
        ),
        click.option(
            "--worker-port",
            "worker_port",
            envvar="DYN_WORKER_PORT",
            type=PortRange(),
            default="0",
            show_envvar=True,
            help="Port of the worker's transport server: 0 (any free port), a port, or a range FIRST-LAST "
            "(the first free one is taken; for firewalls and several workers).",
        ),
        click.option("--lease-ttl", type=float, default=10.0, help="Seconds before a dead worker is forgotten."),
        click.option(
            "--system-host",
            envvar="DYN_SYSTEM_HOST",
            default="127.0.0.1",
            show_envvar=True,
            help="Interface the worker's system port (/health, /live, /metrics) binds.",
        ),
        click.option(
            "--system-port",
            envvar="DYN_SYSTEM_PORT",
            type=PORT,
            default=8081,
            show_envvar=True,
            help="Worker HTTP port for /health, /live and /metrics, 0-65535 (0 = any free port; serve gives "
            "worker i this port + i).",
        ),
    ],
    "Worker",
)


def _advertise_host(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bare host name or IP address: no scheme, path or port (the port is ``--worker-port``'s)."""
    if value is None or not value.strip():
        return None
    host = value.strip()
    if "://" in host or "/" in host or any(char.isspace() for char in host):
        raise click.BadParameter(f"{host!r} is not a host name or IP address (e.g. 10.0.0.7 or worker-1.lan)")
    name, sep, port = host.rpartition(":")
    if sep and name.count(":") == 0 and port.isdigit():
        raise click.BadParameter(
            f"{host!r} carries a port: give the host only ({name}); the port is set with --worker-port"
        )
    return host.strip("[]")


#: ``worker`` and ``serve``: Triton's model control mode.
model_control_option = _apply(
    [
        click.option(
            "--model-control",
            envvar="DYN_MODEL_CONTROL",
            type=click.Choice(["none", "explicit"]),
            default="none",
            show_envvar=True,
            help="Triton's model control mode. none: serve --model (default: every model) until stopped; "
            "explicit: load only --model at start and take load/unload requests from the frontends "
            "(docs/model-control.md).",
        )
    ],
    "Worker",
)


#: ``worker`` only (``serve``'s workers share its host): the address frontends dial.
advertise_host_option = _apply(
    [
        click.option(
            "--advertise-host",
            envvar="DYN_ADVERTISE_HOST",
            show_envvar=True,
            callback=_advertise_host,
            help="Host name or IP address frontends on other hosts dial to reach this worker (tcp), published in "
            "its model cards. Default: --worker-host, or this host's name resolved when that is 0.0.0.0, which "
            "is often wrong (127.0.1.1, a container address). Across hosts, set it to this host's address on the "
            "network the frontends share, with --worker-host 0.0.0.0 (or that address) and a fixed --worker-port.",
        )
    ],
    "Worker",
)


#: Which frontends and which router; each frontend's and router's settings are its plugin's.
frontend_options = _apply(
    [
        click.option(
            "--frontend",
            "frontends_list",
            multiple=True,
            envvar="DYN_FRONTENDS",
            show_envvar=True,
            help="Frontend plugin to start (repeatable; see `dyntriton plugins list`). Default: every frontend "
            "registered as a default one (kserve-grpc and http); when given, the whole list.",
        ),
        _choice(
            "--router",
            envvar="DYN_ROUTER",
            help="Router plugin: which live instance takes a request (see `dyntriton plugins list`; "
            "least-outstanding: the fewest requests in flight, ties in turn; with a slow worker it keeps "
            "throughput where round-robin and random halve it without admission control: "
            "benchmarks/bench_routing.py).",
        ),
        click.option(
            "--max-inflight",
            envvar="DYN_MAX_INFLIGHT",
            type=click.IntRange(min=-1),
            default=0,
            show_default=True,
            show_envvar=True,
            help="Admission control: requests one worker runs at once per model; more wait in the frontend's "
            "queue (deadline order) or are refused at once with RESOURCE_EXHAUSTED / HTTP 503 when they could "
            "not be served in time. 0: from the model's config (its instances, times its largest batch with "
            "dynamic batching, plus one waiting per instance); -1: no admission control (forward everything).",
        ),
        click.option(
            "--max-queue",
            envvar="DYN_MAX_QUEUE",
            type=click.IntRange(min=1),
            default=10_000,
            show_default=True,
            show_envvar=True,
            help="Admission control: requests of one model that may wait in the frontend's queue (Triton's "
            "max_queue_size in the model's config, times its workers, wins).",
        ),
    ],
    "Frontend (every protocol)",
)

#: Tracing at start, spelled as Triton's ``--trace-config`` (``frontend``, ``worker``, ``serve``).
trace_options = _apply(
    [
        click.option(
            "--trace-config",
            "trace_config",
            multiple=True,
            envvar="DYN_TRACE_CONFIG",
            show_envvar=True,
            help="Trace setting as Triton spells it (repeatable): mode=opentelemetry, "
            "opentelemetry,url=http://HOST:4318/v1/traces (the OTLP/HTTP endpoint), level=TIMESTAMPS, "
            "rate=N (1 request in N), count=N (-1: no limit). Needs the `trace` extra. See docs/tracing.md.",
        ),
    ],
    "Tracing",
)


def trace_config(values: Mapping[str, Any]) -> TraceConfig:
    """``--trace-config`` values as a :class:`TraceConfig`; a bad one is a usage error."""
    from dynamo_triton.errors import ConfigError
    from dynamo_triton.runtime.tracing import TraceConfig as Config

    try:
        return Config.parse(tuple(values.get("trace_config") or ()))
    except ConfigError as exc:
        raise click.UsageError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
