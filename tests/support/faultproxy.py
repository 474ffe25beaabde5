"""A small HTTP proxy between the operator and the real API server that answers chosen requests
with errors (503, 429 + Retry-After, 409) or holds them (a timeout): faults a real API server
cannot be made to produce on cue. Everything else, watches included, is passed through."""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from webhook_operator.kube import ssl_context
from webhook_operator.kubeconfig import from_kubeconfig

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


@dataclass
class Fault:
    method: str  # "GET", "PATCH", ... or "*"
    path: str  # a regular expression matched against the whole path (no query)
    status: int = 503
    times: int | None = None  # None: until removed
    retry_after: float | None = None
    hang_s: float = 0.0  # hold the request this long before answering
    forward: bool = False  # after hang_s, forward the request instead of failing it (a slow API server)
    serial: bool = False  # one matching request at a time in its hang_s (an API server at its write rate)
    hits: int = 0
    reason: str = field(default="")

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and re.fullmatch(self.path, path) is not None


class FaultProxy:
    """``http://127.0.0.1:<port>`` forwarding to the cluster with the cluster kubeconfig's credentials."""

    def __init__(self, kubeconfig: Path) -> None:
        self.credentials = from_kubeconfig([kubeconfig])
        self.faults: list[Fault] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")

    # -- the test's side ----------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def write_kubeconfig(self, path: Path) -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "proxy",
            "clusters": [{"name": "proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "proxy", "user": {}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def close(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    # -- the proxy's side ---------------------------------------------------------------
    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path) and (fault.times is None or fault.hits < fault.times):
                    fault.hits += 1
                    return fault
        return None

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        self._serial = asyncio.Lock()
        headers = {"Authorization": f"Bearer {self.credentials.token}"} if self.credentials.token else {}
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(self.credentials)),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(session, request)

        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stopped.wait()
        await runner.cleanup()
        await session.close()

    async def _handle(self, session: aiohttp.ClientSession, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        fault = self._fault_for(request.method, request.path)
        if fault is not None and fault.hang_s:
            if fault.serial:
                async with self._serial:
                    await asyncio.sleep(fault.hang_s)
            else:
                await asyncio.sleep(fault.hang_s)
        if fault is not None and not fault.forward:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            reason = fault.reason or {409: "Conflict", 429: "TooManyRequests"}.get(fault.status, "ServiceUnavailable")
            body = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": reason,
                "message": "injected by the test's fault proxy",
                "code": fault.status,
            }
            return web.json_response(body, status=fault.status, headers=headers)
        forwarded = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"authorization"}}
        body = await request.read()
        async with session.request(
            request.method,
            self.credentials.server + request.path_qs,
            headers=forwarded,
            data=body or None,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers[name] = value
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientError):
                pass  # one side went away (a watch ended)
            return response
