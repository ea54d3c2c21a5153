"""The nats transport passes the transport contract against a real nats-server (JetStream not needed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from dyntriton_transport_nats.connection import NatsSettings
from dyntriton_transport_nats.transport import NatsTransport

from dynamo_triton.testing.transport_contract import TransportContract
from dynamo_triton.transport import Transport


class TestNatsTransport(TransportContract):
    heartbeat = 0.4

    @pytest.fixture
    def transport(self, nats_server: str) -> Transport:
        # A subject prefix per test: the session's server is shared.
        return NatsTransport(
            settings=NatsSettings(servers=(nats_server,)),
            subject_prefix=f"test.{uuid.uuid4().hex[:8]}",
            heartbeat=self.heartbeat,
        )

    async def kill_server(self, server: Any) -> None:
        # A crash as the client sees it: the worker's subscription vanishes, nobody says goodbye.
        await server.abort()

    async def freeze_server(self, server: Any) -> None:
        # What SIGSTOP looks like from the client: the subscription stays, nothing is read or answered.
        server.freeze()

    async def thaw_server(self, server: Any) -> None:
        await server.thaw()
