"""The shared HTTP client for deliveries: verified TLS, no redirects, and a destination check at connect time.

The host is resolved once per new connection, the destination policy filters the addresses, and only
those are dialled, so a DNS answer that changes after the check cannot redirect a delivery; TLS (SNI
and certificate) and the Host header still use the host name from the URL. An IP-literal URL is
checked against the policy before anything is dialled.

HTTP itself is ``http1``: a delivery's POST on an asyncio protocol over the event loop's sockets and
TLS (uvloop's in the operator), with keep-alive connections pooled per TLS configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field

from webhook_operator.delivery.http1 import (
    RESPONSE_BODY_LIMIT,
    Connection,
    DeliveryResponse,
    IdleConnections,
    MalformedResponse,
)
from webhook_operator.policy import (
    DEFAULT_PORTS,
    BlockedDestination,
    DestinationPolicy,
    PolicyViolation,
    Resolver,
    allowed_addresses,
    ip_literal,
    parse_url,
    system_resolve,
)

__all__ = ["RESPONSE_BODY_LIMIT", "DeliveryResponse"]

DEFAULT_TIMEOUT_SECONDS = 10.0
# Longer than the usual 5 s so steady traffic reuses connections, shorter than common server idle timeouts.
KEEPALIVE_EXPIRY_SECONDS = 15.0
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


@dataclass(frozen=True)
class _Target:
    """A webhook URL as it is dialled and sent: parsed once per distinct URL."""

    key: tuple[str, str, int]  # scheme, host, port: the keep-alive pool's key
    host: str
    port: int
    tls: bool
    literal: bool  # an IP literal, already checked against the policy
    head: bytes  # "POST <target> HTTP/1.1\r\nhost: ...\r\n"


def _target_of(url: str) -> _Target:
    parsed = parse_url(url, allow_http=True)
    path = parsed.target
    if not path.isascii():
        path = urllib.parse.quote(path, safe="!#$%&'()*+,/:;=?@[]~")
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    if parsed.port != DEFAULT_PORTS[parsed.scheme]:
        host = f"{host}:{parsed.port}"
    return _Target(
        key=(parsed.scheme, parsed.host, parsed.port),
        host=parsed.host,
        port=parsed.port,
        tls=parsed.scheme == "https",
        literal=ip_literal(parsed.host) is not None,
        head=f"POST {path} HTTP/1.1\r\nhost: {host}\r\n".encode(),
    )


@dataclass
class _Pool:
    """The connections of one TLS configuration."""

    ssl_context: ssl.SSLContext
    idle: IdleConnections = field(default_factory=IdleConnections)
    in_use: int = 0
    last_used: float = 0.0
    closed: bool = False


def _time_out(waiter: asyncio.Future[DeliveryResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class DeliveryClient:
    """The one client all deliveries share: a keep-alive pool, no redirects, no proxies, no cookies."""

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
        self._resolve = resolve
        self._agent = f"user-agent: {user_agent}\r\n"
        self._pool = _Pool(ssl_context)
        self._slots: asyncio.Semaphore | None = None
        self._tls_pools: dict[str, _Pool] = {}  # by TLSMaterial.fingerprint
        self._tls_building: dict[str, asyncio.Future[ssl.SSLContext]] = {}
        self._targets: dict[str, _Target | DeliveryConnectError | BlockedDestinationError] = {}

    async def _tls_pool(self, material: TLSMaterial) -> _Pool:
        """The pool of one TLS configuration: webhooks with the same CA and client certificate share
        its connections; a rotated Secret has a new fingerprint, so new connections use the new material
        while attempts already running finish on the old pool, closed once idle."""
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
                pool = self._tls_pools[key] = _Pool(context)
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
                pool.closed = True
                pool.idle.close()

    @property
    def tls_pools(self) -> int:
        return len(self._tls_pools)

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
        tls: TLSMaterial | None = None,
    ) -> DeliveryResponse:
        """POST ``body`` (through the pool of ``tls`` when the webhook has its own TLS);
        raises a DeliveryError subclass when no HTTP response came back."""
        if tls is None:
            return await self._post(self._pool, url, body, headers, timeout_s)
        try:
            pool = await self._tls_pool(tls)
        except TLSMaterialError as exc:  # checked at reconcile; only a race with a rotation gets here
            raise DeliveryConnectError(f"TLS error: {exc}") from None
        pool.in_use += 1
        try:
            return await self._post(pool, url, body, headers, timeout_s)
        finally:
            pool.in_use -= 1
            pool.last_used = time.monotonic()

    def _request(self, target: _Target, body: bytes, headers: dict[str, str]) -> bytes:
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise DeliveryConnectError("a header name or value contains a line break")
        if "user-agent" not in headers:
            lines += self._agent
        return b"".join((target.head, lines.encode(), b"content-length: %d\r\n\r\n" % len(body), body))

    async def _post(
        self, pool: _Pool, url: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> DeliveryResponse:
        target = await self._target(url)
        request = self._request(target, body, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        slots = self._slots
        if slots is None:
            slots = self._slots = asyncio.Semaphore(self.max_connections)
        async with slots:
            expiry = KEEPALIVE_EXPIRY_SECONDS
            connection = pool.idle.take(target.key, loop.time(), expiry)
            if connection is None:
                connection = await self._connect(pool, target, deadline, timeout_s)
            waiter: asyncio.Future[DeliveryResponse] = loop.create_future()
            timer = loop.call_at(deadline, _time_out, waiter)
            try:
                connection.request(request, waiter)
                response = await waiter
            except BaseException as exc:
                connection.close()  # what the server got, and what is left on the wire, is unknown
                if isinstance(exc, TimeoutError):
                    raise DeliveryTimeout(f"timeout after {timeout_s:g}s") from None
                if isinstance(exc, MalformedResponse):
                    raise DeliveryConnectError(f"malformed response: {exc}") from None
                if isinstance(exc, OSError):
                    raise DeliveryConnectError(_cause(exc)) from None
                raise  # cancelled mid-request
            finally:
                timer.cancel()
            if connection.keep_alive and not pool.closed and connection.usable:
                pool.idle.put(target.key, connection, loop.time(), expiry)
            else:
                connection.close()
            return response

    async def _connect(self, pool: _Pool, target: _Target, deadline: float, timeout_s: float) -> Connection:
        """A new connection to one of the addresses the policy allows, tried in resolver order."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    addresses = await allowed_addresses(target.host, target.port, self.policy, self._resolve)
                except BlockedDestination as exc:
                    raise BlockedDestinationError(exc) from None
                except PolicyViolation as exc:
                    # A name that does not resolve now may resolve later: a connection error, retried like one.
                    raise DeliveryConnectError(exc.message) from None
                failure: OSError | None = None
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            Connection,
                            str(address),
                            target.port,
                            ssl=pool.ssl_context if target.tls else None,
                            server_hostname=target.host if target.tls else None,
                        )
                    except ssl.SSLError as exc:
                        raise DeliveryConnectError(f"TLS error: {exc}") from None
                    except OSError as exc:
                        failure = exc  # refused or unreachable: the next allowed address
                        continue
                    return connection
        except TimeoutError:
            raise DeliveryTimeout(f"timeout after {timeout_s:g}s") from None
        cause = _cause(failure) if failure is not None else "no address to dial"
        raise DeliveryConnectError(f"cannot connect to {target.host} port {target.port}: {cause}", cause)

    async def _target(self, url: str) -> _Target:
        """The parsed URL, once per distinct URL; an IP literal is checked against the policy here,
        once: the policy never changes, so the verdict is kept too."""
        cached = self._targets.get(url)
        if cached is None:
            verdict: _Target | DeliveryConnectError | BlockedDestinationError
            try:
                verdict = _target_of(url)
            except PolicyViolation as exc:  # checked at reconcile; a URL that fails here is never sent
                verdict = DeliveryConnectError(exc.message)
            if isinstance(verdict, _Target) and verdict.literal:
                try:
                    await allowed_addresses(verdict.host, 0, self.policy)
                except BlockedDestination as exc:
                    verdict = BlockedDestinationError(exc)
            if len(self._targets) >= TARGET_CACHE_SIZE:
                self._targets.clear()
            self._targets[url] = cached = verdict
        if isinstance(cached, BlockedDestinationError):
            raise BlockedDestinationError(cached.violation)
        if isinstance(cached, DeliveryConnectError):
            raise DeliveryConnectError(str(cached))
        return cached

    async def aclose(self) -> None:
        for pool in [self._pool, *self._tls_pools.values()]:
            pool.closed = True
            pool.idle.close()
        self._tls_pools = {}

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
