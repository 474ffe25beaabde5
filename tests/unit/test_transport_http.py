"""The delivery client's HTTP/1.1 against a real TCP server on 127.0.0.1: the connection pool (reuse, limits,
expiry), and answers scripted byte by byte (framings, interim responses, bounded bodies, what ends a
connection, malformed answers)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.support.loops import event_loop_policy  # noqa: F401  (both loops)
from webhook_operator.delivery import transport
from webhook_operator.delivery.http1 import RESPONSE_BODY_LIMIT
from webhook_operator.delivery.transport import (
    DeliveryClient,
    DeliveryConnectError,
    DeliveryTimeout,
    _target_of,
    make_client,
)
from webhook_operator.policy import DestinationPolicy

LOOPBACK_ALLOWED = DestinationPolicy.from_strings(["127.0.0.0/8"])


@dataclass
class Server:
    """Answers every request with 200, or with the next of ``answers``: byte pieces written with a short
    pause between them, ``None`` closing the connection there. Can hold replies, and close connections
    once idle; keeps each request's bytes in ``received``."""

    delay_s: float = 0.0
    close_idle_after_s: float | None = None
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: int = 0
    answers: list[list[bytes | None]] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)
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
                self.received.append(head + await reader.readexactly(length))
                self.requests += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                pieces = self.answers.pop(0) if self.answers else [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
                for index, piece in enumerate(pieces):
                    if index:
                        await asyncio.sleep(0.01)  # the client gets each piece on its own
                    if piece is None:
                        return
                    writer.write(piece)
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


# --- HTTP/1.1, answer by answer ------------------------------------------------------------------


async def test_the_request_on_the_wire(server: Server) -> None:
    async with client(10) as http:
        await http.post(server.url() + "?a=1&b=%C3%A4", b'{"x":1}', {"content-type": "application/json", "x-a": "1"})
    [request] = server.received
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /hook?a=1&b=%C3%A4 HTTP/1.1",
        f"host: 127.0.0.1:{server.port}".encode(),
        b"content-type: application/json",
        b"x-a: 1",
        b"user-agent: test",
        b"content-length: 7",
    ]
    assert body == b'{"x":1}'


async def test_a_header_with_a_line_break_is_never_sent(server: Server) -> None:
    async with client(10) as http:
        with pytest.raises(DeliveryConnectError, match="line break"):
            await http.post(server.url(), b"{}", {"x-a": "1\r\nx-injected: 1"})
    assert server.received == []


async def test_a_body_in_pieces_and_headers_are_read(server: Server) -> None:
    server.answers = [[b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\ncontent-", b"length: 11\r\n\r\nhello", b" world"]]
    async with client(10) as http:
        response = await http.post(server.url(), b"{}", {})
    assert (response.status, response.body, response.headers["retry-after"]) == (503, b"hello world", "7")


async def test_chunked_bodies_with_extensions_and_trailers_keep_the_connection(server: Server) -> None:
    server.answers = [
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
            b"6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        ],
        [b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"],
    ]
    async with client(10) as http:
        first = await http.post(server.url(), b"{}", {})
        second = await http.post(server.url(), b"{}", {})
    assert (first.status, first.body) == (200, b"hello world")
    assert (second.status, second.body) == (201, b"")
    assert server.connections == 1


async def test_interim_responses_are_skipped(server: Server) -> None:
    server.answers = [
        [
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ]
    ]
    async with client(10) as http:
        response = await http.post(server.url(), b"{}", {})
        assert response.status == 204
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 1


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_long_body_is_cut_at_the_limit_and_its_connection_not_reused(server: Server, framing: str) -> None:
    long = b"x" * (RESPONSE_BODY_LIMIT * 50)
    if framing == "chunked":
        answer = b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(long), long)
    else:
        answer = b"HTTP/1.1 500 Oops\r\ncontent-length: %d\r\n\r\n%s" % (len(long), long)
    server.answers = [[answer[:4096], answer[4096:]]]  # the rest comes after the limit is reached
    async with client(10) as http:
        response = await http.post(server.url(), b"{}", {})
        assert (response.status, response.body) == (500, b"x" * RESPONSE_BODY_LIMIT)
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_connection_the_server_ends_is_not_reused(server: Server, head: bytes) -> None:
    server.answers = [[head]]
    async with client(10) as http:
        assert (await http.post(server.url(), b"{}", {})).body == b"ok"
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


async def test_a_body_without_length_ends_when_the_server_closes(server: Server) -> None:
    server.answers = [[b"HTTP/1.1 200 OK\r\n\r\nall of ", b"it", None]]
    async with client(10) as http:
        response = await http.post(server.url(), b"{}", {})
    assert response.body == b"all of it"


async def test_a_gzip_body_is_shown_decoded(server: Server) -> None:
    packed = gzip.compress(b"rejected: bad signature")
    server.answers = [
        [b"HTTP/1.1 401 No\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(packed), packed)]
    ]
    async with client(10) as http:
        response = await http.post(server.url(), b"{}", {})
    assert (response.status, response.body) == (401, b"rejected: bad signature")


@pytest.mark.parametrize(
    "answer, says",
    [
        ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], "status line"),
        ([b"HTTP/1.1 2000 OK\r\n\r\n"], "status line"),
        ([b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"], "header"),
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"], "Content-Length"),
        ([b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"], "chunk size"),
        ([b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", None], "closed the connection"),
        ([b"HTTP/1.1 200 OK\r\n", None], "closed the connection"),
        ([None], "closed the connection"),
        ([b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70_000], "longer than"),
    ],
    ids=[
        "not-http",
        "bad-code",
        "header-without-colon",
        "two-lengths",
        "bad-chunk",
        "short-body",
        "head-cut",
        "no-answer",
        "endless-head",
    ],
)
async def test_a_malformed_or_cut_answer_fails_the_attempt_and_the_next_gets_a_new_connection(
    server: Server, answer: list[bytes | None], says: str
) -> None:
    server.answers = [answer]
    async with client(10) as http:
        with pytest.raises(DeliveryConnectError, match=says):
            await http.post(server.url(), b"{}", {})
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


async def test_an_answer_that_stops_midway_times_out_and_its_connection_is_dropped(server: Server) -> None:
    server.answers = [[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhal", b""]]
    async with client(10) as http:
        with pytest.raises(DeliveryTimeout, match=r"timeout after 0\.3s"):
            await http.post(server.url(), b"{}", {}, timeout_s=0.3)
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


async def test_a_cancelled_attempt_drops_its_connection(server: Server) -> None:
    server.answers = [[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhal"]]
    async with client(10) as http:
        attempt = asyncio.ensure_future(http.post(server.url(), b"{}", {}))
        await asyncio.sleep(0.2)
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        assert (await http.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


@pytest.mark.parametrize(
    "url, head",
    [
        ("https://hooks.example.com/a?b=1#frag", b"POST /a?b=1 HTTP/1.1\r\nhost: hooks.example.com\r\n"),
        ("https://hooks.example.com:8443", b"POST / HTTP/1.1\r\nhost: hooks.example.com:8443\r\n"),
        ("http://[::1]:8080/x", b"POST /x HTTP/1.1\r\nhost: [::1]:8080\r\n"),
        ("https://BÜCHER.example/ä", b"POST /%C3%A4 HTTP/1.1\r\nhost: xn--bcher-kva.example\r\n"),
    ],
)
def test_the_request_line_and_host_of_a_url(url: str, head: bytes) -> None:
    assert _target_of(url).head == head
