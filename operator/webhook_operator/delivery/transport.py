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

import asyncio
import hashlib
import os
import socket
import ssl
import time
from dataclasses import dataclass, field

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
# A per-webhook TLS configuration's session is closed once no attempt has used it for this long
# (longer than the keep-alive, so its connections have gone idle by then anyway).
TLS_POOL_IDLE_SECONDS = 60.0


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


@dataclass(frozen=True)
class TLSMaterial:
    """A webhook's own TLS: extra CA certificates (PEM) and a client certificate and key (PEM).

    Never in a repr or a log line; connections are pooled per ``fingerprint``.
    """

    ca_pem: str | None = field(default=None, repr=False)
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for part in (self.ca_pem, self.cert_pem, self.key_pem):
            digest.update((part or "").encode() + b"\0")
        return digest.hexdigest()


class TLSMaterialError(Exception):
    """``which`` (ca | cert) cannot be loaded; the message names no key material."""

    def __init__(self, which: str, message: str) -> None:
        super().__init__(message)
        self.which = which


def load_tls_material(context: ssl.SSLContext, material: TLSMaterial) -> ssl.SSLContext:
    """Add the webhook's CA and client certificate to ``context``; raises TLSMaterialError."""
    if material.ca_pem is not None:
        try:
            context.load_verify_locations(cadata=material.ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise TLSMaterialError("ca", f"not a PEM CA certificate ({_ssl_reason(exc)})") from None
    if material.cert_pem is not None and material.key_pem is not None:
        # ssl loads a certificate chain only from a file: an anonymous memory file, so the key
        # never touches a disk (and a read-only root filesystem is fine).
        fds = [os.memfd_create("tls.crt", os.MFD_CLOEXEC), os.memfd_create("tls.key", os.MFD_CLOEXEC)]
        try:
            for fd, text in zip(fds, (material.cert_pem, material.key_pem), strict=True):
                os.write(fd, text.encode())
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise TLSMaterialError(
                "cert", f"tls.crt and tls.key are not a matching PEM pair ({_ssl_reason(exc)})"
            ) from None
        finally:
            for fd in fds:
                os.close(fd)
    return context


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or type(exc).__name__)


def check_tls_material(material: TLSMaterial) -> None:
    """Whether ``material`` loads, without the system CAs (cheap: run at every reconcile)."""
    load_tls_material(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), material)


@dataclass
class _TLSPool:
    session: aiohttp.ClientSession
    in_use: int = 0
    last_used: float = 0.0


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
        ca_bundle: str | None = None,
    ) -> None:
        self.policy = policy
        self.ca_bundle = ca_bundle
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.user_agent = user_agent
        self._resolver = GuardedResolver(policy, resolve)
        self._session: aiohttp.ClientSession | None = None
        self._tls_pools: dict[str, _TLSPool] = {}  # by TLSMaterial.fingerprint
        self._closing: set[asyncio.Task[None]] = set()
        self._tls_building: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self._targets: dict[str, URL | BlockedDestinationError] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # one per distinct spec.retry.timeoutSeconds

    def _new_session(self, ssl_context: ssl.SSLContext) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=ssl_context,
            resolver=self._resolver,
            use_dns_cache=False,  # every new connection is resolved and checked again
            limit=self.max_connections,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_EXPIRY_SECONDS,
        )
        return aiohttp.ClientSession(
            connector=connector,
            headers={"user-agent": self.user_agent},
            trust_env=False,
            # A receiver's cookies must never travel to another webhook on the same host.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )

    async def _tls_pool(self, material: TLSMaterial) -> _TLSPool:
        """The session of one TLS configuration: webhooks with the same CA and client certificate share
        its connections; a rotated Secret has a new fingerprint, so new connections use the new material
        while attempts already running finish on the old session, closed once idle."""
        key = material.fingerprint
        pool = self._tls_pools.get(key)
        if pool is None:
            # Loading the system CAs takes about 50 ms: built in a thread, once per configuration.
            building = self._tls_building.get(key)
            if building is None:
                building = self._tls_building[key] = asyncio.ensure_future(
                    asyncio.to_thread(self._tls_context, material)
                )
            try:
                context = await asyncio.shield(building)
            finally:
                self._tls_building.pop(key, None)
            pool = self._tls_pools.get(key)
            if pool is None:
                pool = self._tls_pools[key] = _TLSPool(self._new_session(context))
        self._close_idle_pools(keep=key)
        return pool

    def _tls_context(self, material: TLSMaterial) -> ssl.SSLContext:
        # On top of what every delivery trusts (system CAs, --ca-bundle): verification stays on.
        return load_tls_material(make_ssl_context(self.ca_bundle), material)

    def _close_idle_pools(self, keep: str) -> None:
        cutoff = time.monotonic() - TLS_POOL_IDLE_SECONDS
        for key, pool in list(self._tls_pools.items()):
            if key != keep and pool.in_use == 0 and pool.last_used < cutoff:
                del self._tls_pools[key]
                task = asyncio.ensure_future(pool.session.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    @property
    def tls_pools(self) -> int:
        return len(self._tls_pools)

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop aiohttp binds to.
        if self._session is None:
            self._session = self._new_session(self.ssl_context)
        return self._session

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
        tls: TLSMaterial | None = None,
    ) -> DeliveryResponse:
        """POST ``body`` (through the session of ``tls`` when the webhook has its own TLS);
        raises a DeliveryError subclass when no HTTP response came back."""
        if tls is None:
            return await self._post(self._open(), url, body, headers, timeout_s)
        try:
            pool = await self._tls_pool(tls)
        except TLSMaterialError as exc:  # checked at reconcile; only a race with a rotation gets here
            raise DeliveryConnectError(f"TLS error: {exc}") from None
        pool.in_use += 1
        try:
            return await self._post(pool.session, url, body, headers, timeout_s)
        finally:
            pool.in_use -= 1
            pool.last_used = time.monotonic()

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> DeliveryResponse:
        target = await self._target(url)
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with session.post(target, data=body, headers=headers, allow_redirects=False, timeout=timeout) as resp:
                content = resp.content
                data = await content.read(RESPONSE_BODY_LIMIT)
                # A short body has usually all arrived with the head: no second read just to see the end.
                while data and len(data) < RESPONSE_BODY_LIMIT and not content.at_eof():
                    chunk = await content.read(RESPONSE_BODY_LIMIT - len(data))
                    if not chunk:
                        break
                    data += chunk
                return DeliveryResponse(resp.status, resp.headers, data)
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
        pools, self._tls_pools = list(self._tls_pools.values()), {}
        for pool in pools:
            await pool.session.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

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
        ca_bundle=ca_bundle,
    )
