"""Start a throw-away etcd server (Debian's etcd-server) on free loopback ports."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from dynamo_triton.testing.ports import accepts, free_port
from dynamo_triton.testing.processes import stop_process

__all__ = ["EtcdNotInstalled", "etcd_binary", "run_etcd"]


class EtcdNotInstalled(RuntimeError):
    """No ``etcd`` binary on PATH."""


def etcd_binary() -> str:
    """Path of the etcd binary, or raise EtcdNotInstalled saying how to get it."""
    path = shutil.which("etcd")
    if path is None:
        raise EtcdNotInstalled("no etcd binary on PATH: install it with `apt-get install etcd-server`")
    return path


@contextlib.contextmanager
def run_etcd(data_dir: Path | None = None, *, start_timeout: float = 20.0) -> Iterator[str]:
    """Run etcd on 127.0.0.1 with a temp data dir; yields its client URL; always stops it."""
    binary = etcd_binary()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dyntriton-etcd-")))
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        log = (data_dir / "etcd.log").open("wb")
        stack.callback(log.close)
        process = subprocess.Popen(
            [
                binary,
                "--name",
                "dyntriton-test",
                "--data-dir",
                str(data_dir / "data"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"dyntriton-test={peer_url}",
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        stack.callback(stop_process, process, 10)
        deadline = time.monotonic() + start_timeout
        while not accepts(client):
            if process.poll() is not None or time.monotonic() > deadline:
                output = (data_dir / "etcd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"etcd did not start on {client_url}:\n{output}")
            time.sleep(0.05)
        yield client_url
