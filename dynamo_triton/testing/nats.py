"""Start a throw-away nats-server (Debian's nats-server) with JetStream on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dynamo_triton.testing.ports import accepts, free_port
from dynamo_triton.testing.processes import stop_process

__all__ = ["NatsNotInstalled", "NatsServer", "nats_binary", "run_nats"]


class NatsNotInstalled(RuntimeError):
    """No ``nats-server`` binary on PATH (nor in /usr/sbin, where Debian puts it)."""


def nats_binary() -> str:
    """Path of the nats-server binary, or raise NatsNotInstalled saying how to get it."""
    path = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise NatsNotInstalled(
            "no nats-server binary on PATH: install it with `apt-get install nats-server` "
            "(or put the official binary on PATH)"
        )
    return path


@dataclass
class NatsServer:
    """A running nats-server: ``url`` (``nats://127.0.0.1:PORT``), its process and its log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); idempotent."""
        stop_process(self.process, 10)

    def tail(self, chars: int = 2000) -> str:
        """The end of the server's log, for error messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def run_nats(
    data_dir: Path | None = None,
    *,
    extra_args: Sequence[str] = (),
    jetstream: bool = True,
    start_timeout: float = 20.0,
) -> Iterator[NatsServer]:
    """Run nats-server on 127.0.0.1 with JetStream (``-js -sd``) in a temp dir; always stops it.

    :param data_dir: folder for JetStream's storage and the log (a temporary one when None).
    :param extra_args: more nats-server arguments, e.g. ``["--user", "u", "--pass", "p"]``.
    :param jetstream: False to start it without JetStream (to test what users see then).
    :raises NatsNotInstalled: no nats-server binary.
    :raises RuntimeError: the server did not accept connections within ``start_timeout`` s (with its log).
    """
    binary = nats_binary()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dyntriton-nats-")))
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log_path = data_dir / "nats-server.log"
        log = log_path.open("wb")
        stack.callback(log.close)
        command = [binary, "-a", "127.0.0.1", "-p", str(port), *extra_args]
        if jetstream:
            command += ["-js", "-sd", str(data_dir / "jetstream")]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        server = NatsServer(f"nats://127.0.0.1:{port}", process, log_path)
        stack.callback(server.stop)
        deadline = time.monotonic() + start_timeout
        while not accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on {server.url}:\n{server.tail()}")
            time.sleep(0.05)
        yield server
