"""The README's and docs/' shell and Python blocks: each one runs as written, or says here why not.

Every fenced ``bash`` and ``python`` block is found and keyed by its file and first line; a
block must be in :data:`RUN` or in :data:`NOT_RUN` (with the reason), so a new or edited
block cannot go unchecked. Every Python block compiles and every shell block parses
(``bash -n``). The blocks in :data:`RUN` run against one ``serve --model identity --model
repeat`` on free ports (``localhost:8000`` / ``localhost:8787`` in a block are replaced by
its ports, the only change), from a folder laid out as a user's checkout (``.venv`` is the
environment running the tests, ``model_repo``, ``examples``); a block must exit 0 and print no error.
Python blocks run with the interpreter running the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import REPO, START_TIMEOUT, Cluster, Proc, model_ready, wait_until

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(bash|sh|python)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    file: str
    language: str
    text: str

    @property
    def key(self) -> tuple[str, str]:
        return self.file, self.text.strip().splitlines()[0]


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        for match in _FENCE.finditer(path.read_text()):
            found.append(Block(path.relative_to(REPO).as_posix(), match.group(1), match.group(2)))
    return found


#: Blocks run against the module's ``serve`` (or alone): (file, first line).
RUN = {
    ("README.md", "curl -s localhost:8000/v2/models/identity/infer \\"),
    ("docs/rest.md", "curl -s localhost:8000/v2/logging"),
    ("docs/rest.md", "curl -s localhost:8000/v2/models/identity/infer -d '{"),
    ("docs/rest.md", ".venv/bin/python - <<'EOF' > body.bin   # the venv's python: it has numpy"),
    ("docs/rest.md", 'curl -sN localhost:8000/v2/models/repeat/generate_stream -d \'{"id": "g1", "IN": [4, 5, 6]}\''),
    ("docs/security.md", "# the CA (keep ca.key offline once the certificates are made)"),
    ("docs/shared-memory.md", "import numpy as np"),
    ("docs/tracing.md", "import numpy as np"),
}

_SKELETON = "a plugin skeleton: its names (RedisStore, QuicTransport...) are the plugin author's; it compiles"
_HOSTS = "needs the hosts and addresses it names (10.0.x.y); tests/e2e/test_e2e_multihost.py runs the same layout"
#: Blocks that do not run here, and why.
NOT_RUN = {
    (
        "README.md",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[triton,etcd]' && .venv/bin/dyntriton serve "
        "--model identity",
    ): "installs the project (what CI does first); the serve it starts is the module's serve",
    (
        "README.md",
        "etcd --data-dir /tmp/etcd-data &          # if no etcd runs yet; listens on http://localhost:2379",
    ): "starts etcd and serve on their default ports; tests/e2e/test_e2e_cluster.py serves from etcd",
    ("README.md", "python3 -m pip install nox && nox -s tests"): "runs the whole test suite, this test included",
    (
        "docs/model-control.md",
        "dyntriton frontend &",
    ): "tests/e2e/test_e2e_serve_explicit.py::test_the_model_control_docs_example_runs_on_one_host runs it",
    (
        "docs/scaling.md",
        "python benchmarks/bench_scaling.py                     # ~3.5 min; needs h2load and nats-server",
    ): "a benchmark (minutes), never run by tests",
    (
        "docs/sequences.md",
        "dyntriton serve --workers 2 --model simple_sequence --grpc-port 8001 &",
    ): "downloads Triton's example clients; tests/e2e/test_e2e_sequences.py runs the same exchanges",
    ("docs/security.md", "export DYN_TRANSPORT_TOKEN=$(openssl rand -hex 32)   # the same value everywhere"): _HOSTS,
    (
        "docs/security.md",
        "dyntriton serve --model identity \\",
    ): "tests/e2e/test_e2e_extensions.py runs serve with these restriction flags",
    (
        "docs/stores-and-transports.md",
        "nats-server -js -sd /var/lib/nats &            # Debian/Ubuntu: apt-get install nats-server",
    ): "starts nats-server on its default port; tests/e2e/test_e2e_nats.py serves from NATS",
    ("docs/deployment.md", "etcd --name store-1 --data-dir /var/lib/etcd \\"): _HOSTS,
    ("docs/deployment.md", "export DYN_STORE_KV=etcd"): _HOSTS,
    ("docs/deployment.md", "nats kv add dyntriton --history 1 --replicas 3"): _HOSTS,
    ("docs/deployment.md", "dyntriton worker --store-kv etcd --model-repository /srv/models \\"): _HOSTS,
    ("docs/deployment.md", "dyntriton frontend --store-kv etcd --grpc-host 0.0.0.0 --http-host 0.0.0.0"): _HOSTS,
    ("docs/deployment.md", "DYN_STORE_KV=etcd"): _HOSTS,
    ("docs/tracing.md", ".venv/bin/pip install -e '.[triton,trace]'"): "installs the project (what CI does first)",
    ("docs/tracing.md", "dyntriton serve --model identity \\"): (
        "starts serve on the default ports; tests/e2e/test_e2e_tracing.py runs serve with these flags "
        "against an OTLP receiver"
    ),
    (
        "docs/tracing.md",
        """curl -s localhost:8000/v2/trace/setting -d '{"trace_level": ["TIMESTAMPS"], "trace_rate": "100"}'""",
    ): (
        "needs a serve started with --trace-config mode=opentelemetry (the module's is not); "
        "tests/e2e/test_e2e_tracing.py makes the same updates"
    ),
    ("docs/plugins.md", "from dynamo_triton import hookimpl"): _SKELETON,
    ("docs/plugins.md", "@hookimpl"): _SKELETON,
    ("docs/plugins.md", "import ml_dtypes"): _SKELETON,
    ("docs/plugins.md", "def _load():"): _SKELETON,
    ("docs/plugins.md", "import pytest"): _SKELETON,
    ("docs/plugins.md", "import pytest, pytest_asyncio"): _SKELETON,
    ("docs/plugins.md", "from dataclasses import dataclass"): _SKELETON,
    ("docs/plugins.md", "@dataclass(frozen=True)"): _SKELETON,
    ("docs/plugins.md", "from dynamo_triton.cli.composition import plugin_settings"): (
        "needs a plugin registering a 'redis' store with a --redis-url option: the shape of a test, "
        "tests/plugins/test_plugins_settings.py runs the same calls with a plugin of its own"
    ),
}


def test_every_block_is_run_or_says_why_not() -> None:
    keys = {block.key for block in blocks()}
    unclassified = keys - RUN - set(NOT_RUN)
    assert not unclassified, f"blocks neither run nor excused (add them to RUN or NOT_RUN): {sorted(unclassified)}"
    stale = (RUN | set(NOT_RUN)) - keys
    assert not stale, f"RUN / NOT_RUN name blocks the docs no longer have: {sorted(stale)}"


@pytest.mark.parametrize("block", [b for b in blocks() if b.language == "python"], ids=lambda b: b.key[0])
def test_python_blocks_compile(block: Block) -> None:
    compile(block.text, f"{block.file} block", "exec")


@pytest.mark.parametrize("block", [b for b in blocks() if b.language != "python"], ids=lambda b: b.key[0])
def test_shell_blocks_parse(block: Block) -> None:
    result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{block.key}: {result.stderr}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, require_triton: None) -> Iterator[tuple[Proc, Path]]:
    """``serve --model identity --model repeat`` and a folder laid out as a user's checkout."""
    tmp = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    proc, url = cluster.serve("identity", "repeat")
    home = tmp / "checkout"
    home.mkdir()
    (home / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # the environment running the tests
    for name in ("model_repo", "examples"):
        (home / name).symlink_to(REPO / name, target_is_directory=True)
    try:
        wait_until(lambda: model_ready(url, "repeat"), START_TIMEOUT, "serve for the docs", cluster)
        yield proc, home
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("key", sorted(RUN), ids=lambda key: key[0])
def test_the_block_runs_as_written(key: tuple[str, str], served: tuple[Proc, Path], tmp_path: Path) -> None:
    proc, home = served
    block = next(block for block in blocks() if block.key == key)
    http = proc.argv[proc.argv.index("--http-port") + 1]
    grpc = proc.argv[proc.argv.index("--grpc-port") + 1]
    text = block.text.replace("localhost:8000", f"localhost:{http}").replace("localhost:8787", f"localhost:{grpc}")
    work = tmp_path / "cwd"
    work.mkdir()
    for entry in home.iterdir():
        (work / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    command = (
        [sys.executable, "-c", text] if block.language == "python" else ["bash", "-e", "-o", "pipefail", "-c", text]
    )
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{key}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert '"error"' not in result.stdout, f"{key}: {result.stdout}"
