"""The bounded resolver (dns.py): one thread per host however many ask, a timeout, a cache.

The lookup functions here block a real thread the way getaddrinfo does when a DNS server never
answers; the end-to-end case (a real resolver against a silent DNS server) is in tests/chaos.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import pytest

from webhook_operator.dns import HostResolver, LookupTimeout, ResolverCache, getaddrinfo_addresses
from webhook_operator.policy import DestinationPolicy, IPAddress, PolicyViolation, allowed_addresses

LOCAL = ipaddress.ip_address("127.0.0.1")


class Lookups:
    """A blocking lookup: names starting with ``dead`` hang until released, others answer 127.0.0.1."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        with self.lock:
            self.calls.append(host)
        if host.startswith("dead"):
            self.release.wait(10)
            raise OSError("no answer")
        return [LOCAL]


@pytest.fixture
def lookups() -> Lookups:
    lookups = Lookups()
    yield lookups  # type: ignore[misc]
    lookups.release.set()


async def test_a_dead_name_holds_one_thread_however_many_ask_and_others_still_resolve(lookups: Lookups) -> None:
    resolver = HostResolver(lookups, timeout_s=0.3, max_lookups=4)
    started = time.monotonic()
    results = await asyncio.gather(*(resolver(f"dead{i % 3}.example", 443) for i in range(60)), return_exceptions=True)
    assert all(isinstance(r, LookupTimeout) for r in results)
    assert time.monotonic() - started < 2, "callers wait for the timeout, not for the stuck lookups"
    assert sorted(lookups.calls) == ["dead0.example", "dead1.example", "dead2.example"]

    # Asking again while the stuck lookups run costs nothing and fails at once.
    started = time.monotonic()
    with pytest.raises(LookupTimeout):
        await resolver("dead0.example", 443)
    assert time.monotonic() - started < 0.1 and len(lookups.calls) == 3

    # Three of four threads are stuck; a live name still resolves, through the fourth.
    assert await resolver("alive.example", 443) == [LOCAL]
    resolver.close()


async def test_answers_are_cached_and_an_ip_literal_needs_no_lookup(lookups: Lookups) -> None:
    resolver = HostResolver(lookups)
    assert await resolver("Alive.Example.", 443) == [LOCAL]
    assert await resolver("alive.example", 443) == [LOCAL]
    assert await resolver("10.1.2.3", 443) == [ipaddress.ip_address("10.1.2.3")]
    assert lookups.calls == ["alive.example"]
    resolver.close()


async def test_the_policy_still_judges_cached_addresses(lookups: Lookups) -> None:
    resolver = HostResolver(lookups)
    await resolver("alive.example", 443)
    with pytest.raises(PolicyViolation):  # loopback is blocked by the default policy
        await allowed_addresses("alive.example", 443, DestinationPolicy(), resolver)
    resolver.close()


def test_cache_entries_expire_and_the_oldest_goes_first_when_full() -> None:
    cache = ResolverCache(ttl_s=30, negative_ttl_s=5, size=2)
    cache.answer("a", [LOCAL], now=0)
    cache.failure("b", OSError("nx"), now=0)
    assert cache.get("a", 29) is not None and cache.get("a", 30) is None
    assert cache.get("b", 4) is not None and cache.get("b", 5) is None
    cache.answer("c", [LOCAL], now=0)
    cache.answer("d", [LOCAL], now=0)
    cache.answer("e", [LOCAL], now=0)
    assert len(cache) == 2 and cache.get("c", 1) is None and cache.get("e", 1) is not None


async def test_the_system_lookup_resolves_localhost() -> None:
    resolver = HostResolver(getaddrinfo_addresses)
    assert LOCAL in await resolver("localhost", 443)
    resolver.close()


async def test_twenty_dead_names_leave_threads_for_a_live_one_by_default(lookups: Lookups) -> None:
    resolver = HostResolver(lookups, timeout_s=0.3)
    results = await asyncio.gather(*(resolver(f"dead{i}.example", 443) for i in range(20)), return_exceptions=True)
    assert all(isinstance(r, LookupTimeout) for r in results)
    assert await resolver("alive.example", 443) == [LOCAL], "a live name queued behind the stuck lookups"
    resolver.close()
