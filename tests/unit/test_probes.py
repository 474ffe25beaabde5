"""Readiness (pure) and the probe server on loopback: /healthz always, /readyz only when it means it."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from webhook_operator.probes import Facts, ProbeServer, readiness

READY = Facts(loaded=True, leading=True, watches_listed=True, api_age_s=1.0)


def test_ready_when_loaded_api_fresh_and_the_leaders_watches_listed() -> None:
    assert readiness(READY) == []


def test_not_ready_before_the_webhooks_are_loaded() -> None:
    assert readiness(Facts(loaded=False, leading=False, watches_listed=False, api_age_s=0.5)) == [
        "webhooks not loaded yet"
    ]


def test_not_ready_while_the_api_server_has_not_answered_lately() -> None:
    assert readiness(Facts(True, True, True, api_age_s=None)) == ["API server not reachable"]
    assert readiness(Facts(True, True, True, api_age_s=11.0), freshness_s=10.0) == ["API server not reachable for 11s"]


def test_a_leader_is_not_ready_until_its_event_watch_has_listed_but_a_standby_is() -> None:
    assert readiness(Facts(True, leading=True, watches_listed=False, api_age_s=1.0)) == ["event watch not running yet"]
    assert readiness(Facts(True, leading=False, watches_listed=False, api_age_s=1.0)) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_server_answers_healthz_always_and_readyz_from_the_current_facts() -> None:
    facts = [Facts(loaded=False, leading=False, watches_listed=False, api_age_s=None)]

    async def scenario() -> list[tuple[int, str]]:
        port = free_port()
        server = ProbeServer("127.0.0.1", port, lambda: facts[0])
        await server.start()
        seen = []
        try:
            async with aiohttp.ClientSession() as session:
                for path in ("/healthz", "/readyz"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                        seen.append((resp.status, await resp.text()))
                facts[0] = READY
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    seen.append((resp.status, await resp.text()))
        finally:
            await server.close()
        return seen

    healthz, not_ready, ready = asyncio.run(scenario())
    assert healthz == (200, "ok\n")
    assert not_ready == (503, "webhooks not loaded yet; API server not reachable\n")
    assert ready == (200, "ready\n")


def test_bus_mode_is_ready_only_while_connected_to_the_bus() -> None:
    assert readiness(Facts(True, True, True, api_age_s=1.0, bus_connected=True)) == []
    assert readiness(Facts(True, False, False, api_age_s=1.0, bus_connected=False)) == ["event bus not connected"]
    assert readiness(Facts(True, True, True, api_age_s=1.0, bus_connected=None)) == [], "CR mode"
