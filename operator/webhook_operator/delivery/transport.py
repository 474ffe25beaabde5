"""The shared HTTP client for deliveries: verified TLS, no redirects, and a destination check at connect time.

The host is resolved once, the destination policy filters the addresses, and only those are dialled,
so a DNS answer that changes after the check cannot redirect a delivery; TLS (SNI and certificate)
and the Host header still use the host name from the URL.
"""

from __future__ import annotations

import math
import ssl
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


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with a connection pool that connects through GuardedNetworkBackend.

    httpx has no parameter for httpcore's `network_backend`, so the pool httpx builds is replaced by
    an equivalent one with the backend; everything else (request and response mapping, exception
    translation) stays httpx's own.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits, backend: GuardedNetworkBackend) -> None:
        super().__init__(verify=ssl_context, trust_env=False, http1=True, http2=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            # Fail loudly rather than deliver through an unguarded pool if httpx changes its internals.
            raise RuntimeError("unsupported httpx version: AsyncHTTPTransport._pool not found")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )


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
