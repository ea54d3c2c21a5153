"""nox sessions: tests, lint, typecheck, bench. `nox -s tests` is what CI runs."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite against real Triton, etcd, NATS and tritonclient (etcd-server and nats-server installed)."""
    session.install("-e", ".[triton,etcd,nats,test]")
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
