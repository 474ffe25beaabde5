"""HTTP/1.1 for deliveries: one request at a time per connection, keep-alive, a bounded response read.

A delivery needs little of HTTP: send one POST with a known body, read the status line, the headers
and at most ``RESPONSE_BODY_LIMIT`` bytes of the body, and know whether the connection can carry the
next POST. This module does exactly that on an asyncio protocol, so a delivery costs a few small
Python calls on top of the event loop's sockets and TLS (about a third of the CPU of a general client
library here; see the README's Performance section). Everything a full client adds and a delivery
must not do is absent by construction: no redirects, no cookies, no proxies, no retries.

Framing follows RFC 9112 section 6: ``Transfer-Encoding: chunked``, ``Content-Length``, no body for
1xx/204/304, otherwise the body ends when the server closes. A response whose body is longer than
the limit is cut there and its connection closed rather than read to the end; a malformed response
fails the attempt and closes the connection.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from dataclasses import dataclass
from typing import cast

from multidict import CIMultiDict, CIMultiDictProxy

RESPONSE_BODY_LIMIT = 1024
HEAD_LIMIT = 64 * 1024  # status line and headers; a longer head is malformed
_CHUNK_LINE_LIMIT = 4096


@dataclass(frozen=True)
class DeliveryResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes  # at most RESPONSE_BODY_LIMIT bytes of the (decoded) body


class MalformedResponse(Exception):
    """The server's answer is not HTTP/1.x as RFC 9112 frames it."""


class ConnectionClosed(ConnectionError):
    """The server closed the connection before the response was complete."""


# Body framings
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
# Chunked sub-states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends a request and answers with its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._waiter: asyncio.Future[DeliveryResponse] | None = None
        self._reset()

    def _reset(self) -> None:
        self._in_head = True
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._framing = _NONE
        self._remaining = 0
        self._chunk_state = _SIZE
        self._body = bytearray()
        self._encoding = ""
        self.keep_alive = False

    # -- the request ------------------------------------------------------------------------------
    def request(self, data: bytes, waiter: asyncio.Future[DeliveryResponse]) -> None:
        assert self.transport is not None and self._waiter is None
        self._reset()
        self._waiter = waiter
        self.transport.write(data)

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, though it has its methods.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if self._framing == _UNTIL_CLOSE and not self._in_head:
            waiter.set_result(self._response())
            return
        if exc is None:
            exc = ConnectionClosed("the server closed the connection before the response was complete")
        waiter.set_exception(exc)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles a pending response

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Nothing was asked: a server speaking out of turn (a late 408, garbage). Never reused.
            self.close()
            return
        self._buffer += data
        try:
            self._parse()
        except MalformedResponse as exc:
            self._fail(exc)

    # -- parsing ---------------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _parse(self) -> None:
        buffer = self._buffer
        while self._in_head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > HEAD_LIMIT:
                    raise MalformedResponse(f"the response head is longer than {HEAD_LIMIT} bytes")
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            self._head(head)
        framing = self._framing
        if framing == _LENGTH:
            take = min(len(buffer), self._remaining)
            self._keep(buffer, take)
            self._remaining -= take
            if not self._remaining:
                self._done()
            elif len(self._body) >= RESPONSE_BODY_LIMIT:
                self._done(cut=True)
        elif framing == _CHUNKED:
            self._parse_chunked(buffer)
        elif framing == _UNTIL_CLOSE:
            self._keep(buffer, len(buffer))
            if len(self._body) >= RESPONSE_BODY_LIMIT:
                self._done(cut=True)
        else:
            self._done()

    def _keep(self, buffer: bytearray, count: int) -> None:
        room = RESPONSE_BODY_LIMIT - len(self._body)
        if room > 0:
            self._body += buffer[: min(room, count)]
        del buffer[:count]

    def _head(self, head: bytes) -> None:
        status_line, *lines = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        well_formed = len(code) == 3 and code.isdigit() and rest[3:4] in (b"", b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not well_formed:
            raise MalformedResponse(f"not an HTTP/1.x status line: {status_line[:40]!r}")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise MalformedResponse("the server switched protocols")
            return  # an interim response (100 Continue, 103 Early Hints): the final one follows
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        close = version == b"HTTP/1.0"
        encoding = ""
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise MalformedResponse("a header line without a name")
            value = value.strip()
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise MalformedResponse("an invalid Content-Length")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    close = True  # another coding last: the body ends when the server closes
            elif lower == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens and version == b"HTTP/1.0":
                    close = False
            elif lower == b"content-encoding":
                encoding = value.lower().decode("latin-1")
            headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))
        self._in_head = False
        self._status = status
        self._headers = headers
        self._encoding = encoding
        if status in (204, 304):
            self._framing = _NONE
        elif chunked:
            self._framing = _CHUNKED
        elif length is not None:
            self._framing = _LENGTH if length else _NONE
            self._remaining = length
        else:
            self._framing = _UNTIL_CLOSE
            close = True
        self.keep_alive = not close

    def _parse_chunked(self, buffer: bytearray) -> None:
        while True:
            state = self._chunk_state
            if state == _SIZE or state == _TRAILER:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > _CHUNK_LINE_LIMIT:
                        raise MalformedResponse("a chunk line is too long")
                    return
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if state == _TRAILER:
                    if not line:
                        self._done()
                        return
                    continue
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise MalformedResponse("an invalid chunk size") from None
                if size < 0:
                    raise MalformedResponse("an invalid chunk size")
                if size == 0:
                    self._chunk_state = _TRAILER
                else:
                    self._remaining = size
                    self._chunk_state = _DATA
            elif state == _DATA:
                if not buffer:
                    return
                take = min(len(buffer), self._remaining)
                self._keep(buffer, take)
                self._remaining -= take
                if self._remaining:
                    if len(self._body) >= RESPONSE_BODY_LIMIT:
                        self._done(cut=True)
                    return
                self._chunk_state = _DATA_END
            else:  # _DATA_END: the CRLF after a chunk's data
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise MalformedResponse("a chunk without its CRLF")
                del buffer[:2]
                if len(self._body) >= RESPONSE_BODY_LIMIT:
                    self._done(cut=True)
                    return
                self._chunk_state = _SIZE

    def _done(self, *, cut: bool = False) -> None:
        waiter, self._waiter = self._waiter, None
        if cut or self._buffer:
            # Cut short (the rest is not worth reading) or more than one answer to one request.
            self.keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_result(self._response())

    def _response(self) -> DeliveryResponse:
        body = bytes(self._body)
        if self._encoding in ("gzip", "x-gzip", "deflate") and body:
            # Nothing asks for a coding; a server that uses one anyway still gets its words shown.
            try:
                body = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(body, RESPONSE_BODY_LIMIT)
            except zlib.error:
                pass
        return DeliveryResponse(self._status, CIMultiDictProxy(CIMultiDict(self._headers)), body)


class IdleConnections:
    """Keep-alive connections not in use, by (scheme, host, port); the most recently used is taken first,
    and a connection idle for ``expiry_s`` is closed (by a timer, so idle connections do not linger)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], deque[Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._expiry_s = 0.0

    def take(self, key: tuple[str, str, int], now: float, expiry_s: float) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < expiry_s:
                return connection
            connection.close()
        return None

    def put(self, key: tuple[str, str, int], connection: Connection, now: float, expiry_s: float) -> None:
        connection.idle_since = now
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        idle.append(connection)
        if self._sweep is None:
            self._expiry_s = expiry_s
            self._sweep = asyncio.get_running_loop().call_at(now + expiry_s, self._expire)

    def _expire(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        cutoff = now - self._expiry_s
        oldest: float | None = None
        for key, idle in list(self._idle.items()):
            while idle and (idle[0].idle_since <= cutoff or not idle[0].usable):
                idle.popleft().close()
            if idle:
                first = idle[0].idle_since
                oldest = first if oldest is None else min(oldest, first)
            else:
                del self._idle[key]
        if oldest is not None:
            self._sweep = loop.call_at(oldest + self._expiry_s, self._expire)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
