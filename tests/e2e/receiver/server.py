"""An HTTPS webhook receiver for the in-cluster tests: records every POST and serves the record at GET /requests.

It runs in the operator image but uses the standard library only, so any Python image serves.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = int(os.environ.get("PORT", "8443"))
TLS_CERT = os.environ.get("TLS_CERT", "/tls/tls.crt")
TLS_KEY = os.environ.get("TLS_KEY", "/tls/tls.key")

_lock = threading.Lock()
_requests: list[dict[str, object]] = []
_posts_per_url: dict[str, int] = {}


def failures_wanted(path: str) -> int:
    """A URL with ``?fail=N`` gets 503 for its first N requests, so a test can watch the operator retry."""
    values = parse_qs(urlsplit(path).query).get("fail")
    return int(values[0]) if values else 0


def delay_wanted(path: str) -> float:
    """A URL with ``?delay=S`` answers after S seconds, so deliveries are still in flight when a test acts."""
    values = parse_qs(urlsplit(path).query).get("delay")
    return min(float(values[0]), 30.0) if values else 0.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with _lock:
            _posts_per_url[self.path] = _posts_per_url.get(self.path, 0) + 1
            seen = _posts_per_url[self.path]
            _requests.append(
                {
                    "path": self.path,
                    "headers": {name.lower(): value for name, value in self.headers.items()},
                    # Base64, because the signature covers the exact bytes.
                    "body": base64.b64encode(body).decode("ascii"),
                    "receivedAt": time.time(),
                }
            )
        time.sleep(delay_wanted(self.path))
        if seen <= failures_wanted(self.path):
            self._reply(503, b"not yet")
        else:
            self._reply(200, b"ok")

    def do_GET(self) -> None:
        if self.path == "/requests":
            with _lock:
                record = json.dumps(_requests).encode()
            self._reply(200, record, "application/json")
        elif self.path == "/healthz":
            self._reply(200, b"ok")
        else:
            self._reply(404, b"not found")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # One line per request on stdout, so `kubectl logs` shows what arrived when a test fails.
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS_CERT, TLS_KEY)
    server = ThreadingHTTPServer(("", PORT), Handler)
    # The handshake then happens on the first read, in the request's thread, so one slow or
    # broken client cannot hold up the accept loop.
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"receiving on https://0.0.0.0:{PORT}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
