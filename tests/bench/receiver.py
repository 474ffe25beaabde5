"""A fast HTTPS receiver for benchmarks: its own process, plain asyncio protocol, answers 200 at once.

It records how many requests arrived and, for bodies that carry ``"t":<unix microseconds>`` (the
time the benchmark created the event), the latency from that moment to receipt. ``GET /_stats`` returns
the figures as JSON and ``POST /_reset`` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

SENT_AT = re.compile(rb'"t":(\d+)')
REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies_ms = array("d")

    def as_json(self, with_latencies: bool) -> bytes:
        data: dict[str, object] = {"count": self.count, "first": self.first, "last": self.last}
        if with_latencies:
            data["latencies_ms"] = self.latencies_ms.tolist()
        return json.dumps(data).encode()


class Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough of it for POSTs with a content-length."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length = 0
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lowered.find(b"\r\n", at + 2)
                length = int(lowered[at + 17 : stop if stop > 0 else None].strip())
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        path = parts[1] if len(parts) > 1 else b"/"
        stats = self.stats
        if path.startswith(b"/_"):
            if path.startswith(b"/_stats"):
                payload = stats.as_json(with_latencies=b"latencies=1" in path)
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(payload)
                    + payload
                )
            elif path.startswith(b"/_reset"):
                stats.reset()
                self.transport.write(REPLY)
            else:
                self.transport.write(NOT_FOUND)
            return
        received = time.time()
        stats.count += 1
        stats.first = stats.first or received
        stats.last = received
        match = SENT_AT.search(body)
        if match:
            stats.latencies_ms.append(received * 1000.0 - int(match.group(1)) / 1000.0)
        self.transport.write(REPLY)


async def serve(port_file: Path, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(stats), "127.0.0.1", 0, ssl=context, backlog=1024)
    announce(port_file, server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def announce(port_file: Path, port: int) -> None:
    port_file.write_text(str(port))


@dataclass
class ReceiverStats:
    count: int
    first: float
    last: float
    latencies_ms: list[float]


class ReceiverProcess:
    """Starts the receiver as a child process with a trustme certificate; the CA is at ``ca_path``."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_path = workdir / "receiver-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_path = workdir / "receiver-cert.pem"
        self.key_path = workdir / "receiver-key.pem"
        server_cert.cert_chain_pems[0].write_to_path(str(self.cert_path))
        for extra in server_cert.cert_chain_pems[1:]:
            extra.write_to_path(str(self.cert_path), append=True)
        server_cert.private_key_pem.write_to_path(str(self.key_path))
        self.port_file = workdir / "receiver.port"
        self.port_file.unlink(missing_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> ReceiverProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.receiver",
                str(self.port_file),
                str(self.cert_path),
                str(self.key_path),
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.port = int(self.port_file.read_text())
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("receiver did not start in 20s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str = "/hook") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    async def stats(self, client: httpx.AsyncClient, *, latencies: bool = False) -> ReceiverStats:
        response = await client.get(self.url("/_stats" + ("?latencies=1" if latencies else "")))
        data = response.json()
        return ReceiverStats(data["count"], data["first"], data["last"], data.get("latencies_ms", []))

    async def reset(self, client: httpx.AsyncClient) -> None:
        await client.post(self.url("/_reset"), content=b"")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port_file", type=Path)
    parser.add_argument("cert")
    parser.add_argument("key")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port_file, args.cert, args.key))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
