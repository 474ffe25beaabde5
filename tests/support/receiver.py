"""A real HTTPS receiver on loopback whose answers a test scripts, recording every request."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trustme


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float
    client_cert: str = ""  # the client certificate's first subjectAltName, when one was presented
    status: int = 200  # what the receiver answered


class Receiver:
    """HTTPS on 127.0.0.1 with a trustme certificate for 127.0.0.1 and localhost; with ``client_ca``,
    only clients presenting a certificate of that CA complete the handshake (mTLS)."""

    def __init__(self, ca: trustme.CA, *, client_ca: trustme.CA | None = None) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, list[Reply]] = {}
        # rule(path, headers) -> a Reply, or None for the script's: faults that depend on time (503 for 30 s).
        self.rule: Callable[[str, dict[str, str]], Reply | None] | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = receiver._next_reply(self.path, headers)
                peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                names = [value for _, value in (peer or {}).get("subjectAltName", ())]
                with receiver._cond:
                    receiver.requests.append(
                        Received(
                            self.path,
                            headers,
                            body,
                            time.time(),
                            client_cert=str(names[0]) if names else "",
                            status=reply.status,
                        )
                    )
                    receiver._cond.notify_all()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer requests to ``path`` with these replies in order; the last one repeats."""
        with self._lock:
            self._scripts[path] = list(replies)

    def _next_reply(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        rule = self.rule
        if rule is not None:
            reply = rule(path.split("?")[0], headers or {})
            if reply is not None:
                return reply
        with self._lock:
            replies = self._scripts.get(path.split("?")[0])
            if not replies:
                return Reply()
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(
        self,
        count: int,
        path: str | None = None,
        timeout: float = 30.0,
        where: Callable[[Received], bool] | None = None,
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [r for r in self.requests if (path is None or r.path == path) and (where is None or where(r))]
                if len(hits) >= count:
                    return hits
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} request(s) to {path or 'any path'}, got {len(hits)}")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
