"""Click options shared by ``serve``, ``worker`` and ``frontend``: one source of truth for names, env vars, defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dynamo_triton.runtime.routing import POLICIES
from dynamo_triton.transport import TransportSettings

__all__ = [
    "PORT",
    "PortRange",
    "advertise_host_option",
    "backend_options",
    "format_ports",
    "frontend_options",
    "model_control_option",
    "store_connection_options",
    "store_connection_overrides",
    "store_options",
    "store_settings",
    "transport_options",
    "transport_settings",
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


def _restrictions(grpc: bool) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], tuple[str, ...]]:
    def check(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
        from dynamo_triton.runtime.restrictions import parse_restrictions

        try:
            parse_restrictions(value, grpc=grpc)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value

    return check


def _restricted_option(flag: str, envvar: str, *, grpc: bool) -> Callable[[F], F]:
    header = "triton-grpc-protocol-<key>" if grpc else "<key>"
    refusal = "UNAVAILABLE" if grpc else "403"
    return click.option(
        flag,
        envvar=envvar,
        multiple=True,
        show_envvar=True,
        callback=_restrictions(grpc),
        metavar="GROUPS:KEY=VALUE",
        help=f"Triton's restricted {'protocols' if grpc else 'APIs'}: calls of the comma-separated groups "
        f"(health, metadata, inference, shared-memory, model-config, model-repository, statistics, trace, "
        f"logging) need the header {header} with VALUE, or are refused ({refusal}) as Triton refuses them. "
        "Repeatable; a group in one spec only (docs/security.md).",
    )


#: A TCP port: 0-65535, 0 meaning any free port (click says "x is not in the range 0<=x<=65535").
PORT = click.IntRange(0, 65535)


def format_ports(ports: tuple[int, int]) -> str:
    """``(9000, 9010)`` as ``9000-9010``, ``(9000, 9000)`` as ``9000``: how ``--worker-port`` reads it."""
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"


def _apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _export_nats_server(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--nats-server`` is the command-line spelling of ``NATS_SERVER``, which the nats store and
    transport (and Dynamo) read: export it, so this process's plugins and its children see it."""
    if value:
        os.environ["NATS_SERVER"] = value


def _nats_server(help_text: str, *, envvar: str | None) -> Callable[[F], F]:
    return click.option(
        "--nats-server",
        envvar=envvar,
        show_envvar=envvar is not None,
        expose_value=False,
        is_eager=True,
        callback=_export_nats_server,
        help=help_text,
    )


def _store_connection(*, override: bool) -> list[Callable[[F], F]]:
    """``--store-kv``, ``--etcd-endpoints``, ``--file-kv-root``, ``--nats-server``.

    :param override: the sub-command flavour (no default, no env var: a value given after a
        sub-command name overrides the group's).
    """
    if override:
        note = " (may also be given before the sub-command)"
        return [
            click.option("--store-kv", default=None, help="Which KV store" + note + "."),
            click.option("--etcd-endpoints", default=None, help="etcd client URLs" + note + "."),
            click.option(
                "--file-kv-root", default=None, type=click.Path(file_okay=False), help="File store folder" + note + "."
            ),
            _nats_server("NATS server URLs" + note + ".", envvar=None),
        ]
    return [
        click.option(
            "--store-kv",
            envvar="DYN_STORE_KV",
            default="file",
            show_envvar=True,
            help="Key-value store for discovery (see `dyntriton plugins list`): file, etcd, mem, ...",
        ),
        click.option(
            "--etcd-endpoints",
            envvar="ETCD_ENDPOINTS",
            show_envvar=True,
            help="etcd client URLs, comma-separated (--store-kv etcd). Default: http://localhost:2379.",
        ),
        click.option(
            "--file-kv-root",
            envvar="DYN_FILE_KV",
            show_envvar=True,
            type=click.Path(file_okay=False),
            help="Folder of the file store (--store-kv file), shared by every process on the host. "
            "Default: $XDG_RUNTIME_DIR/dyntriton-kv-UID.",
        ),
        _nats_server(
            "NATS server URLs, comma-separated (--store-kv nats, --transport nats; also for the "
            "processes this command starts). Default: nats://localhost:4222.",
            envvar="NATS_SERVER",
        ),
    ]


#: The store a command talks to (``dyntriton store``'s group options).
store_connection_options = _apply(_store_connection(override=False))

#: The same options on a ``store`` sub-command, overriding the group's when given.
store_connection_overrides = _apply(_store_connection(override=True))

store_options = _apply(
    [
        *_store_connection(override=False),
        click.option(
            "--namespace",
            envvar="DYN_NAMESPACE",
            default="dynamo",
            show_envvar=True,
            help="Discovery namespace; frontends see only workers of the same namespace.",
        ),
    ]
)


def store_settings(store_kv: str, etcd_endpoints: str | None, file_kv_root: str | None) -> dict[str, Any]:
    """The store-specific options of ``--store-kv`` for ``Plugins.kv_store`` (only those that apply)."""
    options: dict[str, Any] = {}
    if store_kv == "etcd" and etcd_endpoints:
        options["endpoints"] = etcd_endpoints
    if store_kv == "file" and file_kv_root:
        options["root"] = file_kv_root
    return options


backend_options = _apply(
    [
        click.option("--backend", default="triton", help="Backend plugin that runs the models."),
        click.option(
            "--model",
            "--model-name",
            "models",
            multiple=True,
            help="Model to load (repeatable). Default: every model in the repository.",
        ),
        click.option(
            "--model-repository",
            type=click.Path(file_okay=False),
            default="model_repo",
            help="Triton model repository (folders with config.pbtxt and version dirs).",
        ),
        click.option("--backend-directory", type=click.Path(file_okay=False), help="Triton backends folder."),
        click.option(
            "--log-verbose",
            type=click.IntRange(min=0),
            default=0,
            help="Triton log verbosity (0 = quiet); above 0 gRPC's own error log is shown too.",
        ),
        click.option(
            "--model-load-retries",
            envvar="DYN_MODEL_LOAD_RETRIES",
            type=click.IntRange(min=0),
            default=0,
            show_envvar=True,
            help="Times a model whose load failed is tried again (0: fail at the first error, with its reason).",
        ),
        click.option(
            "--triton-home",
            envvar="TRITON_HOME",
            show_envvar=True,
            type=click.Path(file_okay=False),
            help="Triton installation to embed (default: /opt/tritonserver, then the nvidia-pytriton wheel).",
        ),
    ]
)

worker_options = _apply(
    [
        click.option("--transport", default="tcp", help="Request plane between frontend and workers."),
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
    ]
)


#: ``worker`` and ``serve``: Triton's model control mode.
model_control_option = click.option(
    "--model-control",
    envvar="DYN_MODEL_CONTROL",
    type=click.Choice(["none", "explicit"]),
    default="none",
    show_envvar=True,
    help="Triton's model control mode. none: serve --model (default: every model) until stopped; explicit: "
    "load only --model at start and take load/unload requests from the frontends (docs/model-control.md).",
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


#: ``worker`` only (``serve``'s workers share its host): the address frontends dial.
advertise_host_option = click.option(
    "--advertise-host",
    envvar="DYN_ADVERTISE_HOST",
    show_envvar=True,
    callback=_advertise_host,
    help="Host name or IP address frontends on other hosts dial to reach this worker (tcp), published in "
    "its model cards. Default: --worker-host, or this host's name resolved when that is 0.0.0.0, which "
    "is often wrong (127.0.1.1, a container address). Across hosts, set it to this host's address on the "
    "network the frontends share, with --worker-host 0.0.0.0 (or that address) and a fixed --worker-port.",
)


frontend_options = _apply(
    [
        click.option(
            "--grpc-host",
            envvar="DYN_GRPC_HOST",
            default="127.0.0.1",
            show_envvar=True,
            help="Interface the KServe gRPC port binds (0.0.0.0: every interface, for clients on other hosts).",
        ),
        click.option(
            "--grpc-port",
            envvar="DYN_GRPC_PORT",
            type=PORT,
            default=8787,
            show_envvar=True,
            help="KServe gRPC port, 0-65535 (0 = any free port).",
        ),
        click.option(
            "--http-port",
            envvar="DYN_HTTP_PORT",
            type=click.IntRange(-1, 65535),
            default=8000,
            show_envvar=True,
            help="HTTP port: KServe v2 REST, /health, /live, /metrics; 0-65535 (0 = any free port, -1 = no HTTP).",
        ),
        click.option(
            "--http-host",
            envvar="DYN_HTTP_HOST",
            default="127.0.0.1",
            show_envvar=True,
            help="Interface the HTTP port binds (0.0.0.0: every interface).",
        ),
        click.option(
            "--http-max-input-size",
            type=click.IntRange(min=1),
            default=64 * 1024 * 1024,
            show_default=True,
            help="Largest HTTP request body accepted, in bytes, after decompression (413 beyond it).",
        ),
        click.option(
            "--router",
            type=click.Choice(sorted(POLICIES)),
            default="least-outstanding",
            show_default=True,
            help="Router policy: which live instance takes a request (least-outstanding: the fewest requests "
            "in flight, ties in turn; with a slow worker it keeps throughput where round-robin and random halve "
            "it without admission control: benchmarks/bench_routing.py).",
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
        click.option(
            "--server-name",
            envvar="DYN_SERVER_NAME",
            default="triton",
            show_default=True,
            show_envvar=True,
            help="Name ServerMetadata reports (Triton's clients expect 'triton').",
        ),
        click.option(
            "--stream-window",
            type=click.IntRange(min=1),
            default=1024,
            show_default=True,
            help="Requests one ModelStreamInfer stream may have running or unsent before the frontend stops reading.",
        ),
        click.option(
            "--max-connection-age",
            envvar="DYN_MAX_CONNECTION_AGE",
            type=click.FloatRange(min=0),
            default=5.0,
            show_default=True,
            show_envvar=True,
            help="With shared ports (--reuse-port, several frontend processes): seconds a gRPC connection lives "
            "before the frontend asks its client to open a new one (GOAWAY; gRPC clients do it without failing "
            "a call), and so the longest a draining frontend waits for its clients to move to another process. "
            "0: off (a draining frontend then cancels the calls that reach it late).",
        ),
        click.option(
            "--max-message-size",
            type=int,
            default=256 * 1024 * 1024,
            help="Largest gRPC message accepted or sent, in bytes.",
        ),
        click.option(
            "--tls-cert",
            envvar="DYN_TLS_CERT",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="The frontend's TLS certificate (PEM), on both KServe ports: gRPC and HTTP (REST, /health, "
            "/metrics are then HTTPS). One certificate, because clients dial one host name for both ports "
            "and asking for TLS should leave no port in clear text; --no-http-tls keeps HTTP plain. With --tls-key.",
        ),
        click.option(
            "--tls-key",
            envvar="DYN_TLS_KEY",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="PEM private key of --tls-cert (unencrypted; readable by this user only).",
        ),
        click.option(
            "--tls-client-ca",
            envvar="DYN_TLS_CLIENT_CA",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="PEM CA client certificates must be signed by (mutual TLS): on both ports, so that REST is no "
            "way around it; clients without one are refused.",
        ),
        _restricted_option("--grpc-restricted-protocol", "DYN_GRPC_RESTRICTED_PROTOCOL", grpc=True),
        _restricted_option("--http-restricted-api", "DYN_HTTP_RESTRICTED_API", grpc=False),
        click.option(
            "--http-tls/--no-http-tls",
            envvar="DYN_HTTP_TLS",
            default=True,
            show_default=True,
            show_envvar=True,
            help="With --tls-cert, serve the HTTP port over TLS too. --no-http-tls keeps it plain, for a "
            "TLS-terminating proxy in front of it or plain probes on 127.0.0.1.",
        ),
    ]
)

#: The request plane's protection and liveness, the same on ``worker``, ``frontend`` and ``serve``.
transport_options = _apply(
    [
        click.option(
            "--transport-tls-cert",
            envvar="DYN_TRANSPORT_TLS_CERT",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="Request plane TLS (tcp): the PEM certificate this process presents (a worker's server "
            "certificate, a frontend's client certificate). With --transport-tls-key and --transport-tls-ca.",
        ),
        click.option(
            "--transport-tls-key",
            envvar="DYN_TRANSPORT_TLS_KEY",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="PEM private key of --transport-tls-cert.",
        ),
        click.option(
            "--transport-tls-ca",
            envvar="DYN_TRANSPORT_TLS_CA",
            show_envvar=True,
            type=click.Path(dir_okay=False),
            help="PEM CA the other side's certificate must be signed by (mutual TLS: workers refuse frontends "
            "without one, frontends check the worker's and its host name).",
        ),
        click.option(
            "--transport-token",
            envvar="DYN_TRANSPORT_TOKEN",
            show_envvar=True,
            help="Shared secret: workers serve only frontends that prove they hold it (tcp; never sent). "
            "Prefer the environment variable: command lines are visible to other users.",
        ),
        click.option(
            "--transport-heartbeat",
            envvar="DYN_TRANSPORT_HEARTBEAT",
            type=click.FloatRange(min=0),
            default=1.0,
            show_default=True,
            show_envvar=True,
            help="Seconds without a sign of life before a frontend stops routing to a worker (frozen, stuck) "
            "until it answers again; 0: no heartbeats (tcp and nats).",
        ),
    ]
)


def transport_settings(
    transport_tls_cert: str | None,
    transport_tls_key: str | None,
    transport_tls_ca: str | None,
    transport_token: str | None,
    transport_heartbeat: float,
) -> TransportSettings:
    """TransportSettings from :data:`transport_options`; TLS needs its three files together."""
    given = [transport_tls_cert, transport_tls_key, transport_tls_ca]
    if any(given) and not all(given):
        raise click.UsageError(
            "--transport-tls-cert, --transport-tls-key and --transport-tls-ca go together (mutual TLS): "
            "give all three or none"
        )
    return TransportSettings(
        tls_cert=transport_tls_cert,
        tls_key=transport_tls_key,
        tls_ca=transport_tls_ca,
        token=transport_token or None,
        heartbeat=transport_heartbeat,
    )
