"""A small async Kubernetes API client (aiohttp) for the operator's own reads and writes.

Credentials come from the in-cluster service account or the current kubeconfig (see
``kubeconfig.py``); kopf logs in with the same credentials (``handlers.login``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from webhook_operator import GROUP, VERSION
from webhook_operator.kubeconfig import ConfigError, Credentials, load_credentials, run_exec_plugin_async

REQUEST_TIMEOUT_S = 30.0
TOKEN_FILE_REREAD_S = 60.0  # a projected service-account token rotates; kubelet refreshes the file
EXEC_RENEW_BEFORE_S = 60.0  # an exec plugin's token is replaced this long before it expires

__all__ = ["ApiError", "Credentials", "KubeClient", "load_credentials", "resource_path", "secret_path"]


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after  # seconds, from a Retry-After header


def resource_path(
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    *,
    group: str = GROUP,
    version: str = VERSION,
    subresource: str | None = None,
) -> str:
    base = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def secret_path(namespace: str, name: str | None = None) -> str:
    return resource_path("secrets", namespace, name, group="", version="v1")


def ssl_context(credentials: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=credentials.ca_path)
    if not credentials.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if credentials.cert_path:
        context.load_cert_chain(credentials.cert_path, credentials.key_path)
    return context


def _read_token(path: str) -> str | None:
    """A token file's content; None while it cannot be read (the last token is kept)."""
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


async def _api_error(response: aiohttp.ClientResponse) -> ApiError:
    text = await response.text(errors="replace")
    try:
        status = json.loads(text)
        if not isinstance(status, dict):
            raise ValueError(text)
        reason, message = str(status.get("reason", "")), str(status.get("message", text))
    except ValueError:
        reason, message = response.reason or "", text[:500]
    retry_after: float | None
    try:
        retry_after = max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        retry_after = None
    return ApiError(response.status, reason, message, retry_after=retry_after)


class KubeClient:
    """JSON over one keep-alive connection pool (aiohttp, as kopf uses); counts the requests it makes."""

    def __init__(self, credentials: Credentials, *, max_connections: int = 64) -> None:
        self.credentials = credentials
        self._server = credentials.server.rstrip("/")
        self._ssl = ssl_context(credentials)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._token = credentials.token
        self._token_read = time.monotonic()
        self._expires_at = credentials.expires_at
        self._renewing = asyncio.Lock()
        self.token_renewals = 0
        self.requests = 0
        self.last_response: float | None = None  # monotonic time the API server last answered at all

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop aiohttp binds to.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    @property
    def _renewable(self) -> bool:
        return self.credentials.exec_plugin is not None or self.credentials.token_path is not None

    def _token_due(self) -> bool:
        if self.credentials.exec_plugin is not None:
            return self._token is None or (
                self._expires_at is not None and self._expires_at - time.time() < EXEC_RENEW_BEFORE_S
            )
        return self.credentials.token_path is not None and time.monotonic() - self._token_read > TOKEN_FILE_REREAD_S

    async def _current_token(self, *, rejected: str | None = None) -> str | None:
        """The bearer token to send, renewed first when due (as client-go does): an exec plugin is run
        again before its token expires, a token file is read again every minute; after a 401
        (``rejected``: the token the server refused) both are renewed at once."""
        if not self._renewable or (rejected is None and not self._token_due()):
            return self._token
        async with self._renewing:  # one renewal for all the requests that found it due
            if rejected is not None and self._token != rejected:
                return self._token  # renewed meanwhile
            if rejected is None and not self._token_due():
                return self._token
            plugin = self.credentials.exec_plugin
            if plugin is not None:
                try:
                    result = await run_exec_plugin_async(plugin)
                except ConfigError as exc:
                    # Raised as an I/O error: callers retry it like an unreachable API server.
                    raise ConnectionError(f"renewing the API token failed: {exc}") from exc
                self._token, self._expires_at = result.token, result.expires_at
            elif self.credentials.token_path:
                self._token = _read_token(self.credentials.token_path) or self._token
                self._token_read = time.monotonic()
            self.token_renewals += 1
            return self._token

    @staticmethod
    def _headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        content = None if body is None else json.dumps(body).encode()
        token = await self._current_token()
        for last_try in (False, True):
            self.requests += 1
            try:
                async with self._open().request(
                    method,
                    self._server + path,
                    data=content,
                    params=params,
                    headers=self._headers(token, content_type if content is not None else None),
                ) as response:
                    if response.status == 401 and self._renewable and not last_try:
                        token = await self._current_token(rejected=token)
                        continue  # once more with a renewed token
                    if response.status < 500:
                        self.last_response = time.monotonic()
                    if response.status >= 400:
                        raise await _api_error(response)
                    raw = await response.read()
                    break
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Callers handle an unreachable or failing API server as OSError; aiohttp's errors are not all one.
                raise ConnectionError(f"{method} {path}: {exc!r}") from exc
        result = json.loads(raw) if raw else {}
        return result if isinstance(result, dict) else {}

    async def stream_lines(
        self, path: str, *, params: Mapping[str, str], read_timeout_s: float
    ) -> AsyncIterator[bytes]:
        """The lines of a streamed GET (a watch), as bytes; ApiError for an error status."""
        self.requests += 1
        token = await self._current_token()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=read_timeout_s)
        try:
            async with self._open().get(
                self._server + path, params=params, headers=self._headers(token), timeout=timeout
            ) as response:
                if response.status < 500:
                    self.last_response = time.monotonic()
                if response.status == 401 and self._renewable:
                    await self._current_token(rejected=token)  # the watch is started again by its caller
                if response.status >= 400:
                    raise await _api_error(response)
                pending = b""
                async for chunk in response.content.iter_any():
                    pending += chunk
                    if b"\n" not in chunk:
                        continue
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line
                if pending.strip():
                    yield pending
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionError(f"GET {path} (watch): {exc!r}") from exc

    def seconds_since_response(self) -> float | None:
        return None if self.last_response is None else time.monotonic() - self.last_response

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_pages(
        self, path: str, *, page_size: int = 250, label_selector: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A list, a page at a time, so that a large one never sits in memory whole."""
        token = ""
        while True:
            params = {"limit": str(page_size), **({"continue": token} if token else {})}
            if label_selector:
                params["labelSelector"] = label_selector
            page = await self.request("GET", path, params=params)
            items = page.get("items") or []
            yield items if isinstance(items, list) else []
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=ops, content_type="application/json-patch+json")

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
