"""Run the real ``tritonserver`` binary, to compare dyntriton's answers with Triton's own.

The binary is the one of the Triton distribution the embedded ``triton`` backend uses, asked
through its public capability (:class:`dynamo_triton.backend.StandaloneServer`: ``TRITON_HOME``,
``/opt/tritonserver`` or the ``nvidia-pytriton`` wheel), started on 127.0.0.1
free ports with its log in a temp dir, with the same libraries and python backend stub the
embedded server gets. :func:`run_tritonserver` waits (polling, with a deadline) until the asked
models are ready and always stops the process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dynamo_triton.testing.cluster import START_TIMEOUT, free_port
from dynamo_triton.testing.processes import stop_process

__all__ = ["TritonDirect", "TritonNotInstalled", "run_tritonserver"]


class TritonNotInstalled(RuntimeError):
    """No Triton distribution with a ``tritonserver`` binary here (the message says how to get one)."""


@dataclass(frozen=True)
class TritonDirect:
    """A running ``tritonserver``.

    :param grpc_url: its KServe gRPC endpoint, ``127.0.0.1:<port>`` (for ``tritonclient.grpc``).
    :param http_url: its KServe REST endpoint, ``127.0.0.1:<port>`` (for ``tritonclient.http``).
    :param model_repository: the repository it serves.
    :param models: the models it loaded (empty: every model of the repository).
    :param log: its stdout and stderr.
    """

    grpc_url: str
    http_url: str
    model_repository: Path
    models: tuple[str, ...]
    log: Path

    def output(self) -> str:
        """The server's log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _binary_and_environment(model_repository: Path) -> tuple[list[str], dict[str, str]]:
    """The ``triton`` backend's standalone server (argv and environment), through the public plugin API."""
    from dynamo_triton.backend import BackendSettings, StandaloneServer
    from dynamo_triton.plugins import make_plugin_manager
    from dynamo_triton.settings import promote

    try:
        plugins = make_plugin_manager()
        common = BackendSettings(model_repository=str(model_repository))
        # The triton backend's own settings, with TRITON_HOME read as its --triton-home option reads it.
        own = plugins.get("backend", "triton").settings
        if own is None:
            raise TypeError("the 'triton' backend registers no settings class")
        settings = promote(own, common, triton_home=os.environ.get("TRITON_HOME"))
        backend = plugins.backend("triton", settings)
        if not isinstance(backend, StandaloneServer):
            raise TypeError("the 'triton' backend has no standalone server")
        return backend.standalone_server()
    except Exception as exc:
        raise TritonNotInstalled(
            f"no Triton distribution to run tritonserver from: {exc} (pip install 'dynamo-triton[triton]')"
        ) from exc


def _ready(url: str, models: Sequence[str]) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_server_ready() and all(client.is_model_ready(model) for model in models)
    except Exception:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def run_tritonserver(
    model_repository: str | Path,
    models: Sequence[str] = (),
    *,
    tmp: Path | None = None,
    start_timeout: float = START_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> Iterator[TritonDirect]:
    """Start ``tritonserver`` on ``model_repository``; yield it once ``models`` are ready; stop it.

    :param models: models to load (explicit model control); empty loads every model of the repository.
    :param tmp: folder for the log (default: a temp dir removed afterwards).
    :param start_timeout: seconds to wait for readiness before failing with the log's tail.
    :param extra_args: more ``tritonserver`` arguments, e.g. ``("--log-verbose=1",)``.
    :raises TritonNotInstalled: there is no Triton distribution with the binary.
    :raises AssertionError: the server exits or is not ready in time (the message holds its log).
    """
    repository = Path(model_repository).resolve()
    command, env = _binary_and_environment(repository)
    with contextlib.ExitStack() as stack:
        if tmp is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dyntriton-tritonserver-")))
        grpc_port, http_port = free_port(), free_port()
        loads = [f"--load-model={model}" for model in models] or ["--load-model=*"]
        argv = [
            *command,
            f"--model-repository={repository}",
            "--model-control-mode=explicit",
            *loads,
            f"--grpc-port={grpc_port}",
            f"--http-port={http_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=10",
            *extra_args,
        ]
        log = tmp / f"tritonserver-{grpc_port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        stack.callback(_stop, process)
        server = TritonDirect(f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}", repository, tuple(models), log)
        deadline = time.monotonic() + start_timeout
        while not _ready(server.grpc_url, models):
            if process.poll() is not None:
                raise AssertionError(
                    f"tritonserver exited with status {process.returncode} before it was ready:\n"
                    f"{server.output()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"tritonserver was not ready within {start_timeout:g} s (models: {', '.join(models) or 'all'}):\n"
                    f"{server.output()[-4000:]}"
                )
            time.sleep(0.1)
        yield server


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    stop_process(process, 30)
