"""pytest plugin of dynamo-triton (entry point ``pytest11``): fixtures for contract suites.

Fixtures:

- ``etcd_server``: the client URL of a real etcd started once per session on a free
  loopback port. Without the etcd binary, tests using it skip with the install hint,
  except when ``CI=true``: then they fail, so CI never silently skips etcd.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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
