"""An etcd that a fault test can stop, wipe and start again on the same client URL.

:func:`~dynamo_triton.testing.etcd.run_etcd` picks new ports on every start; a wiped
store must come back where the clients already point, so this one keeps its ports::

    with EtcdNode(tmp_path) as etcd:        # started; etcd.url is http://127.0.0.1:PORT
        ...
        etcd.wipe()                          # stopped, data deleted, a fresh etcd on the same URL
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

from dynamo_triton.testing.etcd import etcd_binary
from dynamo_triton.testing.ports import accepts, free_port
from dynamo_triton.testing.processes import stop_process

__all__ = ["EtcdNode"]


class EtcdNode:
    """One etcd member on fixed loopback ports, its data under ``root / "data"``, its log in ``root / "etcd.log"``."""

    def __init__(self, root: Path, *, start_timeout: float = 20.0):
        self.root, self.start_timeout = root, start_timeout
        self.binary = etcd_binary()
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.data = root / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start etcd (on the data left by the last run, if any); returns once it accepts connections."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "etcd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--name",
                    "dyntriton-fault",
                    "--data-dir",
                    str(self.data),
                    "--listen-client-urls",
                    self.url,
                    "--advertise-client-urls",
                    self.url,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    f"dyntriton-fault={peer}",
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        while not accepts(self.client_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "etcd.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"etcd did not start on {self.url}:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM etcd (SIGKILL after 10 s) and wait for it."""
        if self.process is None:
            return
        stop_process(self.process, 10)
        self.process = None

    def wipe(self) -> None:
        """Lose everything: stop etcd, delete its data folder, start a fresh etcd on the same URL.

        The fresh store starts again from revision 1, knows no lease and no key.
        """
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        self.start()

    def __enter__(self) -> EtcdNode:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
