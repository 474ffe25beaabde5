"""The health port: ``/healthz`` (liveness) from the first second, ``/readyz`` (readiness) once it means it.

Liveness only says the event loop answers, so a slow start-up (thousands of webhooks, a DNS
server that times out) never gets the pod killed. Readiness says the operator can do its job:
webhooks loaded, the API server answered recently, and, on the leader, the event watches have
listed. A standby is ready too: it is ready to take over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from webhook_operator.kube import ApiError, KubeClient

log = logging.getLogger(__name__)

# The API server must have answered within this long for /readyz to pass.
API_FRESHNESS_S = 10.0
# How often the API server is asked when nothing else has talked to it lately.
API_CHECK_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Facts:
    loaded: bool  # every webhook listed and in the index
    leading: bool
    watches_listed: bool  # the leader's event watches have handed over their first list
    api_age_s: float | None  # seconds since the API server last answered; None: never
    bus_connected: bool | None = None  # bus mode: connected to NATS with its streams declared; None: CR mode


def readiness(facts: Facts, freshness_s: float = API_FRESHNESS_S) -> list[str]:
    """What keeps the operator from being ready; empty when it is."""
    problems = []
    if not facts.loaded:
        problems.append("webhooks not loaded yet")
    if facts.api_age_s is None or facts.api_age_s > freshness_s:
        problems.append(
            "API server not reachable"
            if facts.api_age_s is None
            else f"API server not reachable for {facts.api_age_s:.0f}s"
        )
    if facts.leading and not facts.watches_listed:
        problems.append("event watch not running yet")
    if facts.bus_connected is False:
        problems.append("event bus not connected")
    return problems


class ProbeServer:
    """A small aiohttp server for both probes; ``facts`` is read at every request."""

    def __init__(self, host: str, port: int, facts: Callable[[], Facts]) -> None:
        self.host = host
        self.port = port
        self.facts = facts
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        problems = readiness(self.facts())
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ready\n")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def api_check_loop(kube: KubeClient, interval_s: float = API_CHECK_INTERVAL_S) -> None:
    """Ask the API server for its version whenever nothing else has heard from it for ``interval_s``."""
    while True:
        age = kube.seconds_since_response()
        if age is None or age >= interval_s:
            try:
                await asyncio.wait_for(kube.request("GET", "/version"), timeout=interval_s * 2)
            except (ApiError, OSError, TimeoutError) as exc:
                log.debug("API server check failed: %s", exc)
        await asyncio.sleep(interval_s)
