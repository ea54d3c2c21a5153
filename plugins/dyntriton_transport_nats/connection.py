"""NATS connection settings and a bounded connect, shared by the nats transport and the nats KV store.

The options (the CLI's ``--nats-*`` options and their env vars, declared in
:mod:`dyntriton_transport_nats.options`, reach :meth:`NatsSettings.from_options` by these names):

=============  ===================  ==================================================
option         env var of the CLI   meaning
=============  ===================  ==================================================
servers        ``NATS_SERVER``      comma-separated URLs (default ``nats://localhost:4222``);
                                    ``tls://`` turns TLS on
ca_file        ``NATS_CA``          CA bundle (PEM) the server's certificate must chain to; turns TLS on
cert_file      ``NATS_CERT``        client certificate (PEM) for mutual TLS
key_file       ``NATS_KEY``         its private key (PEM)
creds_file     ``NATS_CREDS``       a ``.creds`` file (user JWT + nkey seed; NATS accounts)
user           ``NATS_USER``        user name
password       ``NATS_PASSWORD``    password
token          ``NATS_TOKEN``       authorization token
timeout        --                   seconds a connect (and each store call) may take (default 5)
=============  ===================  ==================================================

``nats-py`` is imported by :func:`connect` only, so building settings is cheap.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamo_triton.errors import ConfigError, DyntritonError
from dynamo_triton.plugins import import_optional
from dyntriton_transport_nats.options import DEFAULT_SERVER

__all__ = ["DEFAULT_SERVER", "NatsSettings", "connect", "start_hint"]

log = logging.getLogger(__name__)


def start_hint(settings: NatsSettings) -> str:
    """What to do when no NATS server answers."""
    return (
        "start one with `nats-server -js` (Debian/Ubuntu: apt-get install nats-server), "
        f"or point NATS_SERVER (now {settings.describe()}) at yours"
    )


@dataclass(frozen=True)
class NatsSettings:
    """How to reach NATS; see the module docstring for where each field comes from."""

    servers: tuple[str, ...] = (DEFAULT_SERVER,)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    creds_file: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = 5.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NatsSettings:
        """Settings from ``options`` (see the module docstring); absent ones keep their defaults."""

        def pick(option: str, variable: str) -> str | None:
            value = options.get(option)
            return str(value) if value else None

        raw = pick("servers", "NATS_SERVER") or DEFAULT_SERVER
        servers = tuple(part.strip() for part in raw.split(",") if part.strip())
        for server in servers:
            if "://" not in server:
                raise ConfigError(
                    f"bad NATS server URL {server!r}; expected nats://HOST:PORT or tls://HOST:PORT",
                    hint="set NATS_SERVER (or the store's servers option) to e.g. nats://localhost:4222",
                )
        return cls(
            servers=servers,
            ca_file=pick("ca_file", "NATS_CA"),
            cert_file=pick("cert_file", "NATS_CERT"),
            key_file=pick("key_file", "NATS_KEY"),
            creds_file=pick("creds_file", "NATS_CREDS"),
            user=pick("user", "NATS_USER"),
            password=pick("password", "NATS_PASSWORD"),
            token=pick("token", "NATS_TOKEN"),
            timeout=float(options.get("timeout") or 5.0),
        )

    @property
    def tls(self) -> bool:
        """True when TLS is asked for: a ``tls://`` URL, a CA file or a client certificate."""
        return any(s.startswith("tls://") for s in self.servers) or bool(self.ca_file or self.cert_file)

    def describe(self) -> str:
        """The server URLs, for messages (never credentials)."""
        return ", ".join(_strip_userinfo(server) for server in self.servers)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context, or None without TLS; ConfigError names an unreadable file."""
        if not self.tls:
            return None
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("a NATS client certificate needs both NATS_CERT and NATS_KEY (cert_file and key_file)")
        for path, what in ((self.ca_file, "CA"), (self.cert_file, "certificate"), (self.key_file, "key")):
            if path and not Path(path).is_file():
                raise ConfigError(f"cannot read the NATS TLS {what} file {path}: no such file")
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _strip_userinfo(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _auth_failure(exc: BaseException | None) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "authorization" in text or "authentication" in text or "permissions" in text


def _client_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    """``nats.connect`` keyword arguments (files checked here: ConfigError names a missing one)."""
    if settings.creds_file and not Path(settings.creds_file).is_file():
        raise ConfigError(f"cannot read the NATS credentials file {settings.creds_file}: no such file")
    options: dict[str, Any] = {
        "servers": list(settings.servers),
        "name": name,
        "connect_timeout": max(1, round(settings.timeout)),
        # first connect: each server twice at most; after it, reconnect forever (set in connect)
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "tls": settings.ssl_context(),
        "user": settings.user,
        "password": settings.password,
        "token": settings.token,
        "user_credentials": settings.creds_file,
    }
    return {key: value for key, value in options.items() if value is not None}


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    purpose: str,
    error: type[DyntritonError],
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
) -> Any:
    """An open ``nats.aio.client.Client``, or ``error`` saying which server, why, and what to do.

    The first connect is bounded by ``settings.timeout``; once connected the client reconnects
    forever in the background (subscriptions come back by themselves) and ``on_disconnect`` runs
    each time the connection drops, so callers can fail what was in flight.

    :param name: the connection's name, shown by the server's monitoring (``connz``).
    :param purpose: what needs it, for the missing-package message (e.g. ``"the nats transport"``).
    :param error: the exception class raised when NATS cannot be reached.
    """
    nats = import_optional("nats", extra="nats", purpose=purpose)
    last: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        last.append(exc)
        log.debug("NATS %s: %s", settings.describe(), exc)

    async def disconnected() -> None:
        if on_disconnect is not None:
            await on_disconnect()

    options = _client_options(settings, name)
    options.update(error_cb=on_error, disconnected_cb=disconnected)
    try:
        async with asyncio.timeout(settings.timeout * 2 + 1):
            client = await nats.connect(**options)
    except Exception as exc:
        refusal = next((failure for failure in last if _auth_failure(failure)), None)
        if refusal is not None:  # the server then closes the socket: later errors are only resets
            raise error(
                f"NATS at {settings.describe()} refused the credentials ({refusal})",
                hint="check NATS_USER / NATS_PASSWORD, NATS_TOKEN or NATS_CREDS",
                status="UNAUTHENTICATED",
            ) from exc
        reason = last[-1] if last else exc
        detail = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        raise error(f"cannot reach NATS at {settings.describe()} ({detail})", hint=start_hint(settings)) from exc
    # nats-py reads these options on every reconnect: from now on, never give up.
    client.options["max_reconnect_attempts"] = -1
    client.options["reconnect_time_wait"] = 1.0
    return client
