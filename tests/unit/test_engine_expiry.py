"""Deleting expired WebhookEvents keeps up with a slow API server and survives an unreachable one.

A small HTTP server on 127.0.0.1 stands in for the API server, so its latency can be set.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from webhook_operator.delivery.engine import EXPIRY_CONCURRENCY, DeliveryEngine
from webhook_operator.delivery.transport import make_client
from webhook_operator.index import WebhookIndex
from webhook_operator.kube import Credentials, KubeClient
from webhook_operator.metrics import Metrics
from webhook_operator.model import now
from webhook_operator.policy import DestinationPolicy
from webhook_operator.settings import Settings

SLOW_S = 0.2


@dataclass
class SlowApi:
    """Answers every request with 200 ``{}`` after ``SLOW_S``; records DELETE paths and the most at once."""

    deletes: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    all_deleted: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                await asyncio.sleep(SLOW_S)
                self.in_flight -= 1
                method, path = head.split(b" ")[:2]
                if method == b"DELETE":
                    self.deletes.append(path.decode())
                    if len(self.deletes) >= self.expected:
                        self.all_deleted.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()


def engine_for(server: str) -> DeliveryEngine:
    credentials = Credentials(
        server=server,
        ca_path=None,
        verify=True,
        cert_path=None,
        key_path=None,
        token=None,
        token_path=None,
        default_namespace=None,
    )
    client = make_client(policy=DestinationPolicy.from_strings([]), user_agent="test")
    return DeliveryEngine(
        Settings(event_ttl_s=1.0),
        KubeClient(credentials),
        WebhookIndex(),
        Metrics(),
        client,
        on_delivery_final=lambda *_: None,
    )


@pytest.fixture
async def slow_api() -> AsyncIterator[SlowApi]:
    api = SlowApi()
    await api.start()
    yield api
    await api.stop()


async def test_expired_events_are_deleted_several_at_a_time(slow_api: SlowApi) -> None:
    engine = engine_for(f"http://127.0.0.1:{slow_api.port}")
    count = 30
    slow_api.expected = count
    for i in range(count):
        engine._push_expiry(now().timestamp() - 1, f"uid-{i}", "shop", f"event-{i}")
    loop = asyncio.create_task(engine.expiry_loop())
    try:
        # One at a time would take count * SLOW_S = 6 s.
        await asyncio.wait_for(slow_api.all_deleted.wait(), count * SLOW_S / 3)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await engine.kube.close()
        await engine.client.aclose()
    assert sorted(slow_api.deletes) == sorted(
        f"/apis/webhook-operator.io/v1alpha1/namespaces/shop/webhookevents/event-{i}" for i in range(count)
    )
    assert 1 < slow_api.most_in_flight <= EXPIRY_CONCURRENCY


async def test_a_deletion_is_retried_while_the_api_server_is_unreachable_and_made_once_it_answers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    engine = engine_for(f"http://127.0.0.1:{closed}")
    engine._push_expiry(now().timestamp() - 1, "uid-1", "shop", "event-1")
    loop = asyncio.create_task(engine.expiry_loop())
    api = SlowApi(expected=1)
    try:
        await asyncio.sleep(1.0)  # a few refused tries
        assert not loop.done()
        assert engine._tasks, "the deletion is still being retried, not dropped"
        api._server = await asyncio.start_server(api._serve, "127.0.0.1", closed)  # the API server is back
        await asyncio.wait_for(api.all_deleted.wait(), timeout=10)
        assert api.deletes == ["/apis/webhook-operator.io/v1alpha1/namespaces/shop/webhookevents/event-1"]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await api.stop()
        await engine.kube.close()
        await engine.client.aclose()
