"""A real nats-server with JetStream (file storage) on a free loopback port, and a small publisher."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nats
import pytest

from devcluster import binaries
from tests.support.operator_process import free_port


class NatsServer:
    def __init__(self, store_dir: Path, log_path: Path) -> None:
        self.binary = binaries.find("nats-server")
        self.store_dir = store_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise AssertionError("nats-server did not listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream", tmp_path / "nats.log").start()
    yield server
    server.stop()


async def _publish(url: str, messages: Sequence[tuple[str, bytes, dict[str, str] | None]]) -> list[Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        acks = []
        for subject, payload, headers in messages:
            acks.append(await js.publish(subject, payload, headers=headers))
        return acks
    finally:
        await nc.close()


def publish(url: str, namespace: str, *events: Any, msg_ids: Sequence[str | None] | None = None) -> list[Any]:
    """Publish events (dicts are JSON-encoded, bytes are sent as they are) as an application would."""
    ids = list(msg_ids) if msg_ids is not None else [None] * len(events)
    messages = []
    for event, msg_id in zip(events, ids, strict=True):
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        messages.append((f"webhook-operator.events.{namespace}", payload, {"Nats-Msg-Id": msg_id} if msg_id else None))
    return asyncio.run(_publish(url, messages))


async def _stream_state(url: str, stream: str) -> Any:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state
    finally:
        await nc.close()


def stream_messages(url: str, stream: str) -> int:
    return int(asyncio.run(_stream_state(url, stream)).messages)
