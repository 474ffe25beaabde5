"""A small async Kubernetes API client (aiohttp) for the operator's own reads and writes.

Credentials come from the in-cluster service account or the current kubeconfig (see
``kubeconfig.py``); kopf logs in with the same credentials (``handlers.login``).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from webhook_operator import GROUP, VERSION
from webhook_operator.kubeconfig import Credentials, load_credentials

REQUEST_TIMEOUT_S = 30.0

__all__ = ["ApiError", "Credentials", "KubeClient", "load_credentials", "resource_path", "secret_path"]


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


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


async def _api_error(response: aiohttp.ClientResponse) -> ApiError:
    text = await response.text(errors="replace")
    try:
        status = json.loads(text)
        reason, message = str(status.get("reason", "")), str(status.get("message", text))
    except ValueError:
        reason, message = response.reason or "", text[:500]
    return ApiError(response.status, reason, message)


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

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        # Projected service-account tokens rotate; re-read the file every minute.
        if self.credentials.token_path and time.monotonic() - self._token_read > 60:
            try:
                self._token = Path(self.credentials.token_path).read_text().strip()
                self._token_read = time.monotonic()
            except OSError:
                pass
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
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
        self.requests += 1
        try:
            async with self._open().request(
                method,
                self._server + path,
                data=content,
                params=params,
                headers=self._headers(content_type if content is not None else None),
            ) as response:
                if response.status < 500:
                    self.last_response = time.monotonic()
                if response.status >= 400:
                    raise await _api_error(response)
                raw = await response.read()
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
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=read_timeout_s)
        try:
            async with self._open().get(
                self._server + path, params=params, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status < 500:
                    self.last_response = time.monotonic()
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

    async def list_pages(self, path: str, *, page_size: int = 250) -> AsyncIterator[list[dict[str, Any]]]:
        """A list, a page at a time, so that a large one never sits in memory whole."""
        token = ""
        while True:
            params = {"limit": str(page_size), **({"continue": token} if token else {})}
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
