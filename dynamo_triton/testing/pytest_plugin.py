"""pytest plugin of dynamo-triton (entry point ``pytest11``): fixtures for contract suites.

Fixtures:

- ``etcd_server``: the client URL of a real etcd started once per session on a free
  loopback port. Without the etcd binary, tests using it skip with the install hint,
  except when ``CI=true``: then they fail, so CI never silently skips etcd.
- ``triton_direct``: a real ``tritonserver`` (the binary of the Triton distribution the
  embedded backend uses), once per module, to compare answers with Triton's own: a
  :class:`~dynamo_triton.testing.tritonserver.TritonDirect` (``.grpc_url``, ``.http_url``).
  It serves this checkout's ``model_repo/`` (every model) unless parametrized indirectly with a
  repository, or a ``(repository, models)`` pair::

      @pytest.mark.parametrize("triton_direct", [(MODEL_REPO, ("classify",))], indirect=True)

  Without Triton it skips (fails under ``CI=true``), like ``etcd_server``.
- ``nats_server``: the URL (``nats://127.0.0.1:PORT``) of a real nats-server with JetStream,
  started once per session on a free loopback port with a temp storage dir; skips without the
  binary (fails under ``CI=true``), like ``etcd_server``. Tests share it: use unique subjects and buckets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dynamo_triton.testing.tritonserver import TritonDirect


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from dynamo_triton.testing.etcd import EtcdNotInstalled, run_etcd

    try:
        with run_etcd(tmp_path_factory.mktemp("etcd")) as url:
            yield url
    except EtcdNotInstalled as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"etcd tests must run in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from dynamo_triton.testing.nats import NatsNotInstalled, run_nats

    try:
        with run_nats(tmp_path_factory.mktemp("nats")) as server:
            yield server.url
    except NatsNotInstalled as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"NATS tests must run in CI: {exc}")
        pytest.skip(str(exc))


def _repository_and_models(param: Any) -> tuple[Path, tuple[str, ...]]:
    """``triton_direct``'s parameter: a repository, or a (repository, models) pair; default model_repo/."""
    from dynamo_triton.testing.cluster import MODEL_REPO

    if param is None:
        return MODEL_REPO, ()
    if isinstance(param, str | os.PathLike):
        return Path(param), ()
    try:
        repository, models = param
    except (TypeError, ValueError):
        raise TypeError(
            f"triton_direct takes a model repository or a (repository, models) pair, got {param!r}"
        ) from None
    return Path(repository), tuple(models)


@pytest.fixture(scope="module")
def triton_direct(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonDirect]:
    from dynamo_triton.testing.tritonserver import TritonNotInstalled, run_tritonserver

    repository, models = _repository_and_models(getattr(request, "param", None))
    try:
        with run_tritonserver(repository, models, tmp=tmp_path_factory.mktemp("tritonserver")) as server:
            yield server
    except TritonNotInstalled as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Triton tests must run in CI: {exc}")
        pytest.skip(str(exc))
