"""nox sessions: tests, lint, typecheck, bench. `nox -s tests` is what CI runs."""

from __future__ import annotations

import glob
import zipfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite against real Triton, etcd, NATS and tritonclient (etcd-server and nats-server installed)."""
    session.install("-e", ".[triton,etcd,nats,test,trace]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on the core package."""
    session.install("-e", ".[dev,test]")  # pytest typed: the testing helpers use it
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks (ratios, never pass/fail): Triton direct vs dyntriton.

    bench_h2load.py and bench_scaling.py need h2load (Debian/Ubuntu: apt-get install nghttp2-client) and
    say so when it is missing; bench_scaling.py also runs nats-server (apt-get install nats-server).
    """
    session.install("-e", ".[triton,etcd,nats,test]")
    scripts = session.posargs or [
        "benchmarks/bench_h2load.py",
        "benchmarks/bench_rest.py",
        "benchmarks/bench_serving.py",
        "benchmarks/bench_scaling.py",
    ]
    for script in scripts:
        session.run("python", script)


@nox.session(python=PYTHON, name="perf_analyzer")
def perf_analyzer(session: nox.Session) -> None:
    """Triton's perf_analyzer against Triton direct and serve, with and without --shared-memory system.

    The binary comes from the tritonclient 2.41.0 wheel (the last that ships it), downloaded into this
    session's folder, never a project dependency; libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel
    installed in this session's virtualenv; Debian's libb64-0d must be installed (apt-get install libb64-0d).
    """
    session.install("-e", ".[triton,test]", "nvidia-cuda-runtime-cu12")
    folder = Path(session.create_tmp())
    binary = folder / "perf_analyzer"
    if not binary.exists():
        session.run("python", "-m", "pip", "download", "--no-deps", "tritonclient==2.41.0", "-d", str(folder))
        (wheel,) = folder.glob("tritonclient-2.41.0-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith("/bin/perf_analyzer"))
            binary.write_bytes(archive.read(member))
        binary.chmod(0o755)
    (cudart,) = glob.glob(f"{session.virtualenv.location}/lib/python*/site-packages/nvidia/cuda_runtime/lib")
    session.run(
        "python",
        "benchmarks/bench_perf_analyzer.py",
        "--perf-analyzer",
        str(binary),
        "--cudart",
        cudart,
        *session.posargs,
    )
