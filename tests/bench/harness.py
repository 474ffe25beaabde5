"""Benchmark plumbing: the API client, watches that time completion, process figures and API server metrics."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from webhook_operator import GROUP, VERSION
from webhook_operator.kube import Credentials, ssl_context
from webhook_operator.kubeconfig import from_kubeconfig

API_VERSION = f"{GROUP}/{VERSION}"
FINAL_PHASES = frozenset({"Delivered", "PartiallyFailed", "Failed", "NoSubscribers"})
CLK_TCK = os.sysconf("SC_CLK_TCK")
REQUEST_TOTAL = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.M)
RequestKey = tuple[str, str, str, str]  # group, resource, subresource, verb
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# -- processes ---------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Samples a process's resident memory in a thread, so a busy event loop cannot skip the peak."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, over all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


class CpuMeter:
    """CPU used by named processes and by the whole machine between ``start`` and ``stop``, in cores."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._began = 0.0
        self.shares: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        values = {"machine": machine_busy_seconds()}
        for name, pid in self.pids.items():
            try:
                values[name] = cpu_seconds(pid)
            except OSError:
                values[name] = 0.0
        return values

    def start(self) -> None:
        self._start = self._read()
        self._began = time.monotonic()

    def stop(self) -> dict[str, float]:
        took = time.monotonic() - self._began
        end = self._read()
        self.shares = {k: round((end[k] - self._start.get(k, 0.0)) / took, 3) for k in end}
        ours = sum(v for k, v in self.shares.items() if k != "machine")
        self.shares["others"] = max(0.0, round(self.shares["machine"] - ours, 3))  # sampling can round below 0
        return self.shares


def machine_info(kube_version: str) -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "kube_version": kube_version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


# -- the API -----------------------------------------------------------------------------
def credentials_for(kubeconfig: Path) -> Credentials:
    """Credentials of a kubeconfig file."""
    return from_kubeconfig([kubeconfig])


def events_path(namespace: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/webhookevents"


def webhooks_path(namespace: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/webhooks"


class Api:
    """The benchmark's own API client: concurrent creates, lists, watches and the server's metrics."""

    def __init__(self, credentials: Credentials, concurrency: int) -> None:
        # aiohttp, as the operator uses: with a slower client the load generator, not the API
        # server, would set the "raw" create rate.
        self.server = credentials.server
        self._ssl = ssl_context(credentials)
        self._limit = concurrency + 4
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=60.0),
                trust_env=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def raw(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **params: str
    ) -> tuple[int, bytes]:
        async with self.session.request(
            method,
            self.server + path,
            params=params or None,
            data=None if body is None else json.dumps(body).encode(),
            headers={"content-type": content_type} if body is not None else None,
        ) as response:
            return response.status, await response.read()

    async def request(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        status, content = await self.raw(method, path, body, **params)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {content[:300].decode(errors='replace')}")
        result = json.loads(content) if content else {}
        return result if isinstance(result, dict) else {}

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def version(self) -> str:
        return str((await self.request("GET", "/version")).get("gitVersion", ""))

    async def ensure_namespace(self, name: str) -> None:
        status, content = await self.raw(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        if status not in (201, 409):
            raise RuntimeError(f"creating namespace {name}: {status} {content[:300].decode(errors='replace')}")

    async def delete_events(self, namespace: str) -> None:
        """Delete every WebhookEvent of the namespace and wait until none is left."""
        await self.request("DELETE", events_path(namespace))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not (await self.request("GET", events_path(namespace), limit="1")).get("items"):
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"WebhookEvents of {namespace} not gone after 120s")

    async def clear_namespace(self, namespace: str) -> None:
        """Remove what an earlier run left: events, webhooks and their Secrets (so new ones are not foreign)."""
        for path in (events_path(namespace), webhooks_path(namespace), f"/api/v1/namespaces/{namespace}/secrets"):
            await self.request("DELETE", path)
        deadline = time.monotonic() + 120
        for path in (events_path(namespace), webhooks_path(namespace)):
            while (await self.request("GET", path, limit="1")).get("items"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} not empty after 120s")
                await asyncio.sleep(0.5)

    async def count(self, path: str) -> int:
        total, token = 0, ""
        while True:
            params = {"limit": "500", **({"continue": token} if token else {})}
            page = await self.request("GET", path, **params)
            total += len(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return total

    async def request_counts(self) -> dict[RequestKey, float]:
        """apiserver_request_total summed by (group, resource, subresource, verb)."""
        _, content = await self.raw("GET", "/metrics")
        counts: dict[RequestKey, float] = defaultdict(float)
        for match in REQUEST_TOTAL.finditer(content.decode()):
            labels = dict(LABEL.findall(match.group("labels")))
            key = (labels.get("group", ""), labels.get("resource", ""), labels.get("subresource", ""), labels["verb"])
            counts[key] += float(match.group("value"))
        return dict(counts)


@dataclass
class Watch:
    """Times when objects first satisfy ``done``, from one watch stream of a collection."""

    api: Api
    path: str
    done: Callable[[dict[str, Any]], bool]
    label_selector: str | None = None
    # Called with (type, object) for every notification, before ``done`` (the pipeline baseline's worker).
    on_object: Callable[[str, dict[str, Any]], None] | None = None
    done_at: dict[str, float] = field(default_factory=dict)
    seen_at: dict[str, float] = field(default_factory=dict)  # when each object first showed on the watch
    target: int = 0
    _reached: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 30)
        return self

    async def _run(self) -> None:
        params = {"limit": "1"}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        listed = await self.api.request("GET", self.path, **params)
        version = listed["metadata"]["resourceVersion"]
        while True:
            watch_params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "3600"}
            if self.label_selector:
                watch_params["labelSelector"] = self.label_selector
            try:
                async with self.api.session.get(
                    self.api.server + self.path,
                    params=watch_params,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=60.0),
                ) as response:
                    self._ready.set()
                    async for line in response.content:
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        obj = item.get("object") or {}
                        if item.get("type") == "ERROR":
                            raise RuntimeError(f"watch error: {obj.get('message')}")
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        name = obj.get("metadata", {}).get("name", "")
                        self.seen_at.setdefault(name, time.time())
                        if self.on_object is not None:
                            self.on_object(item.get("type", ""), obj)
                        if item.get("type") in ("ADDED", "MODIFIED") and name not in self.done_at and self.done(obj):
                            self.done_at[name] = time.time()
                            if self.target and len(self.done_at) >= self.target:
                                self._reached.set()
            except (aiohttp.ClientError, RuntimeError):
                await asyncio.sleep(0.2)  # resume from the last version seen

    async def wait(self, target: int, within_s: float) -> bool:
        self.target = target
        if len(self.done_at) >= target:
            return True
        self._reached.clear()
        try:
            await asyncio.wait_for(self._reached.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def event_final(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in FINAL_PHASES


def webhook_ready(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def run_bounded(count: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> None:
    """``work(i)`` for i in 0..count-1, at most ``concurrency`` at a time, in order of i."""
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


class Operator:
    """``webhook-operator run`` as a child process, optionally under pyinstrument, with its figures."""

    def __init__(
        self,
        kubeconfig: Path,
        args: list[str],
        log_path: Path,
        profile_path: Path | None = None,
        ready_line: str = "delivering",
    ) -> None:
        self.ready_line = ready_line  # a bus-mode standby says "bus: consuming" instead
        self.kubeconfig = kubeconfig
        self.args = args
        self.log_path = log_path
        self.profile_path = profile_path
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss: RssSampler | None = None  # from the first moment, with ``start(sample_rss=True)``
        self.launched_at = 0.0

    def start(self, timeout: float = 120.0, *, sample_rss: bool = False) -> Operator:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        runner = ["-m"]
        if self.profile_path is not None:
            runner = ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(self.profile_path), "-m"]
        argv = [
            sys.executable,
            *runner,
            "webhook_operator.cli",
            "run",
            "--bind-address",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            *self.args,
        ]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.launched_at = time.time()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        if sample_rss:
            self.rss = RssSampler(self.proc.pid).__enter__()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log_path}")
            if self.ready_line in self.log_path.read_bytes()[offset:].decode(errors="replace") and self._healthy():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"operator not ready after {timeout}s; see {self.log_path}")

    def _healthy(self, probe: str = "healthz") -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/{probe}", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    async def wait_ready(self, within_s: float) -> float | None:
        """Wall time at which ``/readyz`` first answered 200 (webhooks loaded, event watch listed), or None."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._healthy, "readyz"):
                return time.time()
            await asyncio.sleep(0.1)
        return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> None:
        if self.rss is not None:
            self.rss.__exit__()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
