"""Every shipped transport passes the one transport contract."""

from __future__ import annotations

from typing import Any

import pytest

from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.testing.transport_contract import TransportContract
from dynamo_triton.transport import Transport, TransportSettings


class TestTcpTransport(TransportContract):
    heartbeat = 0.4

    @pytest.fixture
    def transport(self) -> Transport:
        return make_plugin_manager().transport("tcp", TransportSettings(heartbeat=self.heartbeat))

    async def kill_server(self, server: Any) -> None:
        # What a crash looks like from the client: the listening socket and every
        # connection vanish at once, nobody says goodbye.
        server.abort()

    async def freeze_server(self, server: Any) -> None:
        # What SIGSTOP looks like from the client: connections stay open, nothing is read or answered,
        # not even on the new connections the client probes with.
        server.freeze()

    async def thaw_server(self, server: Any) -> None:
        server.thaw()


class TestInprocTransport(TransportContract):
    @pytest.fixture
    def transport(self) -> Transport:
        return make_plugin_manager().transport("inproc")
