"""Host name resolution that a few dead names cannot exhaust.

``loop.getaddrinfo`` runs in the loop's default thread pool (``min(32, cpus + 4)`` threads, 6 on a
2-core node), shared with everything else run in an executor; a name whose DNS server never
answers holds a thread for the resolver's whole timeout (glibc: 5 s, twice, for each server).
A handful of such webhooks, looked up by reconciles and deliveries at once, then stalled every
lookup. ``HostResolver`` bounds that:

- its own pool of ``max_lookups`` threads;
- one lookup in flight per host: everyone asking for that host meanwhile shares its answer, so a
  dead name holds at most one thread, whatever its number of deliveries;
- a timeout per caller (``timeout_s``); the thread is left to finish, and until it does the host
  answers "timed out" at once;
- a cache: answers for ``ttl_s``, failures for ``negative_ttl_s``. Addresses are still checked
  against the destination policy on every use (``policy.allowed_addresses``), so a cached answer
  cannot let a delivery reach a blocked range.

The decisions (fresh or stale, share or start) live in ``ResolverCache``, which tests drive with
a clock of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from webhook_operator.policy import IPAddress, ip_literal

TIMEOUT_S = 5.0
TTL_S = 30.0
NEGATIVE_TTL_S = 10.0
# More threads than hosts likely to be dead at once: a lookup queued behind stuck ones would time out
# too (20 silent names held 16 threads and delayed a live name's deliveries by 33 s).
MAX_LOOKUPS = 64
MAX_CACHED_HOSTS = 10_000

Lookup = Callable[[str, int], list[IPAddress]]  # blocking, run in the resolver's threads


class LookupTimeout(OSError):
    """The name did not resolve within the timeout."""


def getaddrinfo_addresses(host: str, port: int) -> list[IPAddress]:
    """The system resolver's TCP addresses of ``host``, de-duplicated, in resolver order (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass
class Entry:
    expires: float
    addresses: list[IPAddress] | None = None
    error: OSError | None = None


class ResolverCache:
    """Answers and failures by host, each until its expiry (pure: the clock is passed in)."""

    def __init__(self, *, ttl_s: float = TTL_S, negative_ttl_s: float = NEGATIVE_TTL_S, size: int = MAX_CACHED_HOSTS):
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.size = size
        self._entries: dict[str, Entry] = {}

    def get(self, host: str, now: float) -> Entry | None:
        entry = self._entries.get(host)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._entries[host]
            return None
        return entry

    def answer(self, host: str, addresses: list[IPAddress], now: float) -> None:
        self._put(host, Entry(now + self.ttl_s, addresses=addresses))

    def failure(self, host: str, error: OSError, now: float) -> None:
        self._put(host, Entry(now + self.negative_ttl_s, error=error))

    def _put(self, host: str, entry: Entry) -> None:
        if host not in self._entries and len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]  # the oldest inserted
        self._entries[host] = entry

    def __len__(self) -> int:
        return len(self._entries)


class HostResolver:
    """An async ``Resolver`` (``policy.Resolver``): ``await resolver(host, port)``."""

    def __init__(
        self,
        lookup: Lookup = getaddrinfo_addresses,
        *,
        timeout_s: float = TIMEOUT_S,
        max_lookups: int = MAX_LOOKUPS,
        cache: ResolverCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self.timeout_s = timeout_s
        self.max_lookups = max_lookups
        self.cache = cache or ResolverCache()
        self._clock = clock
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: dict[str, asyncio.Future[list[IPAddress]]] = {}
        self.lookups = 0  # lookups started (threads used), for tests and benchmarks

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        key = host.lower().rstrip(".")
        entry = self.cache.get(key, self._clock())
        if entry is not None:
            if entry.error is not None:
                raise entry.error
            assert entry.addresses is not None
            return list(entry.addresses)
        future = self._inflight.get(key)
        if future is None:
            future = self._start(key, port)
        try:
            return list(await asyncio.wait_for(asyncio.shield(future), self.timeout_s))
        except TimeoutError:
            error = LookupTimeout(f"DNS lookup of {host} timed out after {self.timeout_s:g}s")
            if key in self._inflight:
                # Until the stuck lookup returns, everyone else gets this answer at once.
                self.cache.failure(key, error, self._clock())
            raise error from None

    def _start(self, key: str, port: int) -> asyncio.Future[list[IPAddress]]:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.max_lookups, thread_name_prefix="dns")
        loop = asyncio.get_running_loop()
        self.lookups += 1
        future = loop.run_in_executor(self._pool, self._lookup, key, port)
        self._inflight[key] = future

        def done(f: asyncio.Future[list[IPAddress]]) -> None:
            self._inflight.pop(key, None)
            if f.cancelled():
                return
            error = f.exception()
            if error is None:
                self.cache.answer(key, f.result(), self._clock())
            elif isinstance(error, OSError):
                self.cache.failure(key, error, self._clock())
            elif isinstance(error, UnicodeError):
                self.cache.failure(key, OSError(str(error)), self._clock())

        future.add_done_callback(done)
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
