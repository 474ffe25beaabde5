"""The shared HTTP client for deliveries: verified TLS, no redirects, and a destination check at connect time.

The host is resolved once, the destination policy filters the addresses, and only those are dialled,
so a DNS answer that changes after the check cannot redirect a delivery; TLS (SNI and certificate)
and the Host header still use the host name from the URL.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Iterable

import anyio
import httpcore
import httpx

from webhook_operator.policy import (
    BlockedDestination,
    DestinationPolicy,
    PolicyViolation,
    Resolver,
    allowed_addresses,
    system_resolve,
)

DEFAULT_TIMEOUT_SECONDS = 10.0
# Longer than the usual 5 s so steady traffic reuses connections, shorter than common server idle timeouts.
KEEPALIVE_EXPIRY_SECONDS = 15.0
# How often idle connections the pool is not about to reuse are probed for expiry or a server-side close.
IDLE_SWEEP_SECONDS = 1.0


class BlockedDestinationError(httpx.TransportError):
    """The destination resolved only to addresses the policy blocks; nothing was dialled. Not worth retrying."""

    def __init__(self, violation: PolicyViolation) -> None:
        super().__init__(violation.message)
        self.violation = violation
        self.reason = violation.reason
        self.message = violation.message


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves, filters through the destination policy, then dials the allowed addresses in order."""

    def __init__(
        self,
        policy: DestinationPolicy,
        resolve: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolve = resolve
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface passes the connect timeout
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # One deadline covers resolution and every dial: it is the request's connect timeout.
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        try:
            with anyio.fail_after(timeout):
                addresses = await allowed_addresses(host, port, self._policy, self._resolve)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except BlockedDestination as exc:
            raise BlockedDestinationError(exc) from None
        except PolicyViolation as exc:
            # A name that does not resolve now may resolve later: a connection error, retried like one.
            raise httpcore.ConnectError(exc.message) from None

        options = list(socket_options) if socket_options is not None else None
        errors: list[str] = []
        for address in addresses:
            remaining = None if deadline == math.inf else max(0.0, deadline - anyio.current_time())
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=options,
                )
            except httpcore.ConnectTimeout:
                raise
            except httpcore.ConnectError as exc:
                errors.append(f"{address}: {_dial_failure(exc)}")
        raise httpcore.ConnectError(f"cannot connect to {host} port {port}: " + "; ".join(errors))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("deliveries never use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _dial_failure(exc: BaseException) -> str:
    """Why one dial failed: anyio reports "All connection attempts failed" and keeps the reason as the cause."""
    cause: BaseException | None = exc
    innermost = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        innermost = cause
        cause = cause.__cause__
    return str(innermost) or str(exc)


class LinearConnectionPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with a request-to-connection pass that does not grow with the square of its connections.

    httpcore 1.0 rescans every connection for each idle one and for each queued request, and probes
    every idle socket on every pass, twice per request; with the hundred connections a busy operator
    keeps open, that bookkeeping cost several times the CPU of the requests themselves (see
    tests/bench). Here a connection is probed for expiry right before it is reused, the others once a
    second, an idle connection already promised to a request is not handed out again, and the
    keep-alive limit counts idle connections. Only HTTP/1.1 is used, so a connection serves one
    request at a time.
    """

    _next_sweep = 0.0

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        kept = [c for c in self._connections if not c.is_closed()]
        promised = {id(r.connection) for r in self._requests if r.connection is not None}
        idle = [c for c in kept if c.is_idle() and id(c) not in promised]

        def drop(connection: httpcore.AsyncConnectionInterface) -> None:
            kept.remove(connection)
            closing.append(connection)

        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + IDLE_SWEEP_SECONDS
            for connection in [c for c in idle if c.has_expired()]:
                idle.remove(connection)
                drop(connection)
        if self._max_keepalive_connections is not None and len(idle) > self._max_keepalive_connections:
            surplus = len(idle) - self._max_keepalive_connections
            for connection in idle[:surplus]:
                drop(connection)
            idle = idle[surplus:]

        for request in self._requests:
            if not request.is_queued():
                continue
            origin = request.request.url.origin
            chosen = None
            for connection in [c for c in idle if c.can_handle_request(origin) and c.is_available()]:
                idle.remove(connection)
                if connection.has_expired():
                    drop(connection)
                    continue
                chosen = connection
                break
            if chosen is None:
                if len(kept) >= self._max_connections:
                    if not idle:
                        continue  # wait for a connection to come back
                    drop(idle.pop(0))  # an idle connection to another origin makes room
                chosen = self.create_connection(origin)
                kept.append(chosen)
            request.assign_to_connection(chosen)
        self._connections = kept
        return closing


class PooledTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP/1.1 transport on a LinearConnectionPool that dials through ``backend``, if given.

    httpx has no parameter for httpcore's pool or `network_backend`, so the pool httpx builds is
    replaced by an equivalent one; everything else (request and response mapping, exception
    translation) stays httpx's own.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits, backend: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        super().__init__(verify=ssl_context, trust_env=False, http1=True, http2=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            # Fail loudly rather than deliver through an unguarded pool if httpx changes its internals.
            raise RuntimeError("unsupported httpx version: AsyncHTTPTransport._pool not found")
        self._pool = LinearConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


class GuardedTransport(PooledTransport):
    """The deliveries' transport: every connection is dialled through GuardedNetworkBackend."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits, backend: GuardedNetworkBackend) -> None:
        super().__init__(ssl_context=ssl_context, limits=limits, backend=backend)


def make_ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """System CAs plus the CAs in the PEM file `ca_bundle`; a missing or unreadable file fails here, at startup."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def make_client(
    *,
    policy: DestinationPolicy,
    ca_bundle: str | None = None,
    max_connections: int = 100,
    resolve: Resolver = system_resolve,
    user_agent: str,
) -> httpx.AsyncClient:
    """The one client all deliveries share: HTTP/1.1 keep-alive pool, no redirects, no proxy variables."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
    )
    transport = GuardedTransport(
        ssl_context=make_ssl_context(ca_bundle),
        limits=limits,
        backend=GuardedNetworkBackend(policy, resolve),
    )
    return httpx.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": user_agent},
        timeout=httpx.Timeout(DEFAULT_TIMEOUT_SECONDS),
    )
