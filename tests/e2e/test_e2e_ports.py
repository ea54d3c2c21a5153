"""Port options: the range is checked and said, a taken port is named, and a frontend answers nothing
until every listener it was asked for is bound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dynamo_triton.errors import ConfigError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.launch import FrontendConfig, start_frontend
from dynamo_triton.testing.ports import accepts, free_port


def _dyntriton(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv")}
    return subprocess.run(
        [sys.executable, "-m", "dynamo_triton", *args], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        ("frontend", "--grpc-port", "70000"),
        ("frontend", "--http-port", "99999"),
        ("frontend", "--grpc-port", "-1"),
        ("serve", "--grpc-port", "70000"),
        ("serve", "--system-port", "65536"),
        ("worker", "--system-port", "70000"),
        ("worker", "--worker-port", "9000-70000"),
    ],
)
def test_a_port_out_of_range_is_refused_with_the_range(command: str, option: str, value: str, tmp_path: Path) -> None:
    result = _dyntriton(command, option, value, tmp=tmp_path)
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and "65535" in result.stderr, result.stderr


def test_serve_refuses_system_ports_past_65535_for_its_workers(tmp_path: Path) -> None:
    result = _dyntriton("serve", "--workers", "3", "--system-port", "65534", tmp=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "past 65535" in result.stderr


def test_ports_handed_out_in_one_process_are_all_different() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def _config(*, grpc_port: int, http_port: int) -> FrontendConfig:
    """Both shipped frontends on 127.0.0.1, HTTP listed first (the order must not matter)."""
    from dyntriton_frontend_http.options import HttpSettings
    from dyntriton_frontend_kserve_grpc.options import GrpcSettings

    frontends = (
        ("http", HttpSettings(host="127.0.0.1", port=http_port)),
        ("kserve-grpc", GrpcSettings(host="127.0.0.1", port=grpc_port)),
    )
    return FrontendConfig(frontends=frontends)


async def test_a_taken_http_port_fails_before_grpc_answers_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyntriton_frontend_kserve_grpc.server import KServeGrpcFrontend

    started: list[int] = []
    serve = KServeGrpcFrontend.start

    async def spied_start(self: KServeGrpcFrontend) -> None:  # the real start, recorded
        started.append(self.port)
        await serve(self)

    monkeypatch.setattr(KServeGrpcFrontend, "start", spied_start)
    plugins = make_plugin_manager()
    store = plugins.kv_store("mem")
    grpc_port = free_port()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            config = _config(grpc_port=grpc_port, http_port=taken.getsockname()[1])
            with pytest.raises(ConfigError, match="cannot listen for HTTP"):
                await start_frontend(plugins, store, config)
    finally:
        await store.close()
    assert started == [], "gRPC served before the HTTP port was bound"
    assert not accepts(grpc_port), "the gRPC port is released"


async def test_a_taken_grpc_port_fails_before_http_answers_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from dyntriton_frontend_http.server import HttpFrontend

    started: list[int] = []
    serve = HttpFrontend.start

    async def spied_start(self: HttpFrontend) -> None:  # the real start, recorded
        started.append(self.port)
        await serve(self)

    monkeypatch.setattr(HttpFrontend, "start", spied_start)
    plugins = make_plugin_manager()
    store = plugins.kv_store("mem")
    http_port = free_port()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            config = _config(grpc_port=taken.getsockname()[1], http_port=http_port)
            with pytest.raises(ConfigError, match="address already in use"):
                await start_frontend(plugins, store, config)
    finally:
        await store.close()
    assert started == [], "HTTP served before the gRPC port was bound"
    assert not accepts(http_port), "the HTTP port is released"
