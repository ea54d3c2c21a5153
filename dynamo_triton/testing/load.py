"""Closed-loop inference load for fault tests: C threads, each with its own tritonclient, counting outcomes.

Every request has a client deadline; one that passes it counts as ``hung`` (the fault
suite's "none hung"). Failures are counted by gRPC status name::

    with Load(url, concurrency=8) as load:
        load.wait_for(ok=100, timeout=30)      # load flows
        ...                                    # the fault
    assert load.failures == {}, load.report()
"""

from __future__ import annotations

import collections
import threading
import time
from types import TracebackType

__all__ = ["Load"]


class Load:
    """``concurrency`` threads sending ``model`` (the identity model's INPUT0/OUTPUT0) until stopped.

    :param deadline: client timeout per request, seconds; a request past it is counted as hung.
    :param own_connections: each thread dials its own TCP connection, like independent clients (gRPC
        otherwise shares one connection between channels to the same target): needed to spread the
        load over frontend processes that share a port (SO_REUSEPORT balances connections).
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 8,
        model: str = "identity",
        deadline: float = 10.0,
        own_connections: bool = False,
    ):
        self.url, self.concurrency, self.model, self.deadline = url, concurrency, model, deadline
        self.own_connections = own_connections
        self.ok = 0
        self.hung = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.last_ok = 0.0
        self.longest_gap = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Load:
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending; waits for every request in flight to end (each is bounded by ``deadline``)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.deadline + 5)

    def _run(self) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        channel_args = [("grpc.use_local_subchannel_pool", 1)] if self.own_connections else None
        client = grpcclient.InferenceServerClient(self.url, channel_args=channel_args)
        data = np.arange(16, dtype=np.int32).reshape(1, 16)
        try:
            while not self._stop.is_set():
                tensor = grpcclient.InferInput("INPUT0", list(data.shape), "INT32")
                tensor.set_data_from_numpy(data)
                try:
                    result = client.infer(self.model, [tensor], client_timeout=self.deadline)
                    assert (result.as_numpy("OUTPUT0") == data).all()
                except InferenceServerException as exc:
                    self._count(str(exc.status() or "UNKNOWN").removeprefix("StatusCode."), str(exc))
                else:
                    self._count(None, "")
        finally:
            client.close()

    def _count(self, status: str | None, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if status is None:
                if self.last_ok:
                    self.longest_gap = max(self.longest_gap, now - self.last_ok)
                self.ok += 1
                self.last_ok = now
            elif status == "DEADLINE_EXCEEDED":
                self.hung += 1
                self.examples.setdefault(status, message)
            else:
                self.failures[status] += 1
                self.examples.setdefault(status, message)

    def wait_for(self, *, ok: int, timeout: float) -> None:
        """Block until ``ok`` more requests succeeded; AssertionError with the report after ``timeout``."""
        target = self.ok + ok
        deadline = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"{ok} requests did not succeed within {timeout:g} s: {self.report()}")
            time.sleep(0.02)

    def report(self) -> str:
        """``ok=812 hung=0 failures={} longest gap 0.21 s`` plus one example message per failure status."""
        with self._lock:
            text = (
                f"ok={self.ok} hung={self.hung} failures={dict(self.failures)} "
                f"longest gap between successes {self.longest_gap:.2f} s"
            )
            for status, message in self.examples.items():
                text += f"\n  {status}: {message[:300]}"
        return text
