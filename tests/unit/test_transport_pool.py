"""The delivery client's connection pool against a real HTTP/1.1 server on 127.0.0.1: reuse, limits, expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from webhook_operator.delivery import transport
from webhook_operator.delivery.transport import DeliveryClient, make_client
from webhook_operator.policy import DestinationPolicy

LOOPBACK_ALLOWED = DestinationPolicy.from_strings(["127.0.0.0/8"])


@dataclass
class Server:
    """Answers every request with 200; can hold replies, and close connections once idle."""

    delay_s: float = 0.0
    close_idle_after_s: float | None = None
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: int = 0
    port: int = 0
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.close_idle_after_s)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        finally:
            self.open_now -= 1
            if not self.open_now:
                self.all_closed.set()
            writer.close()

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = Server()
    await running.start()
    yield running
    await running.stop()


@contextlib.asynccontextmanager
async def client(max_connections: int) -> AsyncIterator[DeliveryClient]:
    http = make_client(policy=LOOPBACK_ALLOWED, max_connections=max_connections, user_agent="test")
    try:
        yield http
    finally:
        await http.aclose()


async def test_sequential_requests_share_one_connection(server: Server) -> None:
    async with client(10) as http:
        for _ in range(20):
            assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 1


async def test_concurrent_requests_beyond_the_limit_wait_for_a_connection(server: Server) -> None:
    server.delay_s = 0.02
    async with client(3) as http:
        replies = await asyncio.gather(*(http.post(server.url(), b"{}", {}) for _ in range(30)))
    assert [r.status for r in replies] == [200] * 30
    assert server.most_open <= 3
    assert server.requests == 30


async def test_steady_concurrent_traffic_reuses_its_connections(server: Server) -> None:
    async with client(20) as http:

        async def worker() -> None:
            for _ in range(10):
                assert (await http.post(server.url(), b"{}", {})).status == 200

        await asyncio.gather(*(worker() for _ in range(5)))
    # Five at a time need five connections, not one per request.
    assert server.connections <= 5
    assert server.requests == 50


async def test_a_connection_the_server_closed_while_idle_is_not_reused(server: Server) -> None:
    server.close_idle_after_s = 0.05
    async with client(10) as http:
        assert (await http.post(server.url(), b"{}", {})).status == 200
        await asyncio.sleep(0.3)  # the server has closed the idle connection by now
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


async def test_idle_connections_past_keep_alive_expiry_are_closed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "KEEPALIVE_EXPIRY_SECONDS", 0.2)
    async with client(10) as http:
        await asyncio.gather(*(http.post(server.url(), b"{}", {}) for _ in range(4)))
        opened = server.connections
        await asyncio.wait_for(server.all_closed.wait(), 3)  # closed by the client, while it stays open
        assert server.open_now == 0
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == opened + 1
    assert server.requests == 5
