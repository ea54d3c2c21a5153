"""examples/launch/identity.sh and examples/client.py work as documented, and the script cleans up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo_triton.testing.cluster import START_TIMEOUT, free_port, model_ready, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.slow


def test_launch_script_and_client(tmp_path: Path, require_triton: None) -> None:
    grpc_port = free_port()
    env = {
        **os.environ,
        "DYN_FILE_KV": str(tmp_path / "kv"),
        "DYN_GRPC_PORT": str(grpc_port),
        "DYN_HTTP_PORT": str(free_port()),
        "DYN_SYSTEM_PORT": str(free_port()),
        "DYNTRITON": str(Path(sys.executable).parent / "dyntriton"),
    }
    log = (tmp_path / "launch.log").open("wb")
    script = subprocess.Popen(
        ["bash", str(EXAMPLES / "launch" / "identity.sh")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"127.0.0.1:{grpc_port}"
        wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity via identity.sh")
        client = subprocess.run(
            [sys.executable, str(EXAMPLES / "client.py"), "--url", url, "--shape", "1", "10", "--requests", "3"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert "ok: every output equals its input" in client.stdout
    finally:
        script.send_signal(signal.SIGTERM)
        code = script.wait(60)
        log.close()
    assert code in (0, 143), (tmp_path / "launch.log").read_text()[-3000:]
    for port in (grpc_port, int(env["DYN_SYSTEM_PORT"])):  # frontend and worker are gone: nobody listens
        wait_until(lambda p=port: not listening(p), 30, f"port {port} to close")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
