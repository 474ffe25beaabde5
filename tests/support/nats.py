"""A real nats-server with JetStream (file storage) on a free loopback port, a 3-node cluster of them,
and small publishers."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nats
import nats.errors
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
            self.command(),
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

    def command(self) -> list[str]:
        return [str(self.binary), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]

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


# -- a 3-node JetStream cluster on loopback ----------------------------------------------------
class ClusterNode(NatsServer):
    """One node of a NATS cluster: client port, route port and monitoring port on loopback, own store."""

    def __init__(self, name: str, workdir: Path) -> None:
        super().__init__(workdir / name, workdir / f"{name}.log")
        self.name = name
        self.route_port = free_port()
        self.http_port = free_port()
        self.config = workdir / f"{name}.conf"
        self.routes: list[str] = []

    def command(self) -> list[str]:
        routes = ", ".join(f'"{r}"' for r in self.routes)
        self.config.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.http_port}"\n'
            f'jetstream {{ store_dir: "{self.store_dir}" }}\n'
            f'cluster {{ name: "webhook-operator-test", listen: "127.0.0.1:{self.route_port}", routes: [{routes}] }}\n'
        )
        return [str(self.binary), "-c", str(self.config)]

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/{path}", timeout=2) as resp:
            return dict(json.loads(resp.read()))

    def jsz(self) -> dict[str, Any]:
        return self.monitor("jsz")

    def connections(self) -> int:
        """Client connections to this node (the operators', publishers')."""
        return int(self.monitor("connz").get("num_connections") or 0)


class NatsCluster:
    """Three nats-server processes routed to each other (JetStream, file storage), for replicated streams."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [ClusterNode(f"n{i}", workdir) for i in range(size)]
        for node in self.nodes:
            node.routes = [f"nats://127.0.0.1:{other.route_port}" for other in self.nodes if other is not node]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_for_meta_leader(timeout)
        return self

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def running_urls(self) -> list[str]:
        return [node.url for node in self.running()]

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's name, once every running node agrees on one."""
        leaders = set()
        for node in self.running():
            try:
                leaders.add((node.jsz().get("meta_cluster") or {}).get("leader"))
            except OSError:
                return None
        return leaders.pop() if len(leaders) == 1 and None not in leaders and "" not in leaders else None

    def wait_for_meta_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader:
                return leader
            time.sleep(0.2)
        logs = " | ".join(node.log_path.read_text()[-500:] for node in self.nodes)
        raise AssertionError(f"no JetStream meta leader: {logs}")

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats-cluster").start()
    yield cluster
    cluster.stop()


async def _stream_info(urls: Sequence[str], stream: str) -> Any:
    nc = await nats.connect(list(urls))
    try:
        return await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()


def stream_info(urls: Sequence[str], stream: str, timeout: float = 20.0) -> Any:
    """``$JS.API.STREAM.INFO``: config, state and, on a cluster, ``cluster.leader`` and its replicas (asked
    again while the cluster elects a leader and cannot answer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(_stream_info(urls, stream))
        except (nats.errors.Error, TimeoutError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


async def _consumer_infos(urls: Sequence[str], consumers: Sequence[tuple[str, str]]) -> list[Any]:
    nc = await nats.connect(list(urls))
    try:
        js = nc.jetstream()
        return [await js.consumer_info(stream, consumer) for stream, consumer in consumers]
    finally:
        await nc.close()


async def _leaders(urls: Sequence[str], consumers: Sequence[tuple[str, str]]) -> list[str]:
    return [str(info.cluster.leader if info.cluster else "") for info in await _consumer_infos(urls, consumers)]


def consumer_replicas(urls: Sequence[str], consumers: Sequence[tuple[str, str]]) -> list[int]:
    """How many nodes hold each (stream, durable) consumer: its leader and its other peers."""
    infos = asyncio.run(_consumer_infos(urls, consumers))
    return [(1 if info.cluster and info.cluster.leader else 0) + len(info.cluster.replicas or []) for info in infos]


def consumer_leaders(urls: Sequence[str], consumers: Sequence[tuple[str, str]], timeout: float = 20.0) -> list[str]:
    """The names of the nodes leading these (stream, durable) consumers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            leaders = asyncio.run(_leaders(urls, consumers))
            if all(leaders):
                return leaders
        except (nats.errors.Error, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader for one of {consumers}")
        time.sleep(0.2)


def stream_leader(urls: Sequence[str], stream: str, timeout: float = 20.0) -> str:
    """The name of the node leading ``stream`` (waiting for an election to end)."""
    deadline = time.monotonic() + timeout
    while True:
        cluster = stream_info(urls, stream, timeout).cluster
        if cluster is not None and cluster.leader:
            return str(cluster.leader)
        if time.monotonic() > deadline:
            raise AssertionError(f"stream {stream} has no leader")
        time.sleep(0.2)


class BackgroundPublisher:
    """Publishes events from a thread of its own as a careful application does: pipelined, each with a
    ``Nats-Msg-Id``, and a publication not acknowledged (a NATS node lost, a leader election) sent again
    under the same id until the stream has it, so that the de-duplication window keeps it once."""

    def __init__(
        self,
        urls: Sequence[str],
        namespace: str,
        event: str,
        end: int,
        *,
        first: int = 0,
        window: int = 256,
        rate: float | None = None,
    ) -> None:
        """Events ``first`` to ``end - 1``, each ``{"n": i}`` with the id ``e-<i>``; ``rate`` paces them
        (events/s, in windows of ``window``)."""
        self.urls = list(urls)
        self.subject = f"webhook-operator.events.{namespace}"
        self.event = event
        self.first = first
        self.count = end - first
        self.window = window
        self.rate = rate
        self.stored = 0
        self.repeated = 0  # publications sent again after an error or a missing ack
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> BackgroundPublisher:
        self._thread.start()
        return self

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"publishing did not finish: {self.stored} of {self.count} stored"
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _run(self) -> None:
        nc = await nats.connect(self.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        js = nc.jetstream(timeout=5)
        try:
            pending = list(range(self.first, self.first + self.count))
            while pending:
                failed: list[int] = []
                began = time.monotonic()
                for start in range(0, len(pending), self.window):
                    if self.rate:
                        await asyncio.sleep(max(0.0, began + start / self.rate - time.monotonic()))
                    chunk = pending[start : start + self.window]
                    results = await asyncio.gather(*(self._one(js, i) for i in chunk), return_exceptions=True)
                    for i, result in zip(chunk, results, strict=True):
                        if isinstance(result, BaseException):
                            failed.append(i)
                        else:
                            self.stored += 1
                if failed:
                    self.repeated += len(failed)
                    await asyncio.sleep(0.5)
                pending = failed
        finally:
            await nc.close()

    async def _one(self, js: Any, i: int) -> Any:
        payload = json.dumps({"event": self.event, "data": {"n": i}}).encode()
        return await js.publish(self.subject, payload, headers={"Nats-Msg-Id": f"e-{i}"})
