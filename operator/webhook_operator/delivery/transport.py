"""The shared HTTP client for deliveries: verified TLS, no redirects, and a destination check at connect time.

The host is resolved once per new connection, the destination policy filters the addresses, and only
those are dialled, so a DNS answer that changes after the check cannot redirect a delivery; TLS (SNI
and certificate) and the Host header still use the host name from the URL. An IP-literal URL is
checked against the policy before anything is dialled.

Built on aiohttp (kopf's own HTTP stack, with a C HTTP parser): a delivery costs about a fifth of
the CPU it did on httpx (see tests/bench). aiohttp is used only through its public interface: a
custom resolver and the session's request options.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDictProxy
from yarl import URL

from webhook_operator.policy import (
    BlockedDestination,
    DestinationPolicy,
    PolicyViolation,
    Resolver,
    allowed_addresses,
    ip_literal,
    shown_url,
    system_resolve,
)

DEFAULT_TIMEOUT_SECONDS = 10.0
# Longer than the usual 5 s so steady traffic reuses connections, shorter than common server idle timeouts.
KEEPALIVE_EXPIRY_SECONDS = 15.0
RESPONSE_BODY_LIMIT = 1024
TARGET_CACHE_SIZE = 10_000  # distinct webhook URLs whose parsed form is kept


class DeliveryError(Exception):
    """A delivery attempt that got no HTTP response."""


class BlockedDestinationError(DeliveryError):
    """The destination resolved only to addresses the policy blocks; nothing was dialled. Not worth retrying."""

    def __init__(self, violation: PolicyViolation) -> None:
        super().__init__(violation.message)
        self.violation = violation
        self.reason = violation.reason
        self.message = violation.message


class DeliveryConnectError(DeliveryError):
    """No connection, a failed TLS handshake, or a connection lost mid-request: worth retrying.

    ``short`` is the text for a delivery's ``error`` field ("connection refused", "TLS error: ...").
    """

    def __init__(self, message: str, short: str | None = None) -> None:
        super().__init__(message)
        self.short = (short or message)[:200]


class DeliveryTimeout(DeliveryError):
    """The attempt ran out of time (connecting, sending or waiting for the response)."""


@dataclass(frozen=True)
class DeliveryResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes  # at most RESPONSE_BODY_LIMIT bytes of the (decoded) body


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver: one lookup, filtered through the destination policy, allowed addresses only."""

    def __init__(self, policy: DestinationPolicy, resolve: Resolver = system_resolve) -> None:
        self._policy = policy
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await allowed_addresses(host, port, self._policy, self._resolve)
        except BlockedDestination as exc:
            raise BlockedDestinationError(exc) from None
        except PolicyViolation as exc:
            # A name that does not resolve now may resolve later: a connection error, retried like one.
            raise DeliveryConnectError(exc.message) from None
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": socket.IPPROTO_TCP,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class DeliveryClient:
    """The one client all deliveries share: a keep-alive pool, no redirects, no proxy variables."""

    def __init__(
        self,
        *,
        policy: DestinationPolicy,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        user_agent: str,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.policy = policy
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.user_agent = user_agent
        self._resolver = GuardedResolver(policy, resolve)
        self._session: aiohttp.ClientSession | None = None
        self._targets: dict[str, URL | BlockedDestinationError] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop aiohttp binds to.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self.ssl_context,
                resolver=self._resolver,
                use_dns_cache=False,  # every new connection is resolved and checked again
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=KEEPALIVE_EXPIRY_SECONDS,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"user-agent": self.user_agent},
                trust_env=False,
                # A receiver's cookies must never travel to another webhook on the same host.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = DEFAULT_TIMEOUT_SECONDS
    ) -> DeliveryResponse:
        """POST ``body``; raises a DeliveryError subclass when no HTTP response came back."""
        target = await self._target(url)
        session = self._open()
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with session.post(target, data=body, headers=headers, allow_redirects=False, timeout=timeout) as resp:
                chunks = bytearray()
                while len(chunks) < RESPONSE_BODY_LIMIT:
                    chunk = await resp.content.read(RESPONSE_BODY_LIMIT - len(chunks))
                    if not chunk:
                        break
                    chunks += chunk
                return DeliveryResponse(resp.status, resp.headers, bytes(chunks))
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise DeliveryTimeout(f"timeout after {timeout_s:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise DeliveryConnectError(f"TLS error: {exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise DeliveryConnectError(f"TLS error: {_cause(exc)}") from None
        except aiohttp.ClientConnectorError as exc:
            cause = _cause(exc)
            raise DeliveryConnectError(f"cannot connect to {exc.host} port {exc.port}: {cause}", cause) from None
        except (aiohttp.ClientError, OSError) as exc:
            # Some aiohttp errors (a malformed response) name the URL, whose path or query may hold a token.
            cause = _cause(exc)
            for full in {url, str(target)}:
                cause = cause.replace(full, shown_url(url))
            raise DeliveryConnectError(cause) from None

    async def _target(self, url: str) -> URL:
        """The parsed URL, once per distinct URL; an IP literal is checked against the policy here,
        since aiohttp dials literals without asking the resolver. The policy never changes, so
        the verdict is kept too."""
        cached = self._targets.get(url)
        if cached is None:
            parsed = URL(url)
            host = parsed.host or ""
            verdict: URL | BlockedDestinationError = parsed
            if ip_literal(host) is not None:
                try:
                    await allowed_addresses(host, 0, self.policy)
                except BlockedDestination as exc:
                    verdict = BlockedDestinationError(exc)
            if len(self._targets) >= TARGET_CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = cached = verdict
        if isinstance(cached, BlockedDestinationError):
            raise BlockedDestinationError(cached.violation)
        return cached

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> DeliveryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def _cause(exc: BaseException) -> str:
    """The innermost reason of a failure, in the words an operator reads in status."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ssl.SSLError):
            return str(seen)
        seen = seen.__cause__ or getattr(seen, "os_error", None)
    return str(exc) or type(exc).__name__


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
) -> DeliveryClient:
    return DeliveryClient(
        policy=policy,
        ssl_context=make_ssl_context(ca_bundle),
        max_connections=max_connections,
        user_agent=user_agent,
        resolve=resolve,
    )
