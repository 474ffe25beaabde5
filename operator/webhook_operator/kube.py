"""A small async Kubernetes API client (httpx) for the operator's own reads and writes.

Credentials come from the in-cluster service account or the current kubeconfig, loaded by
the ``kubernetes`` package; kopf logs in with the same credentials (see ``login_info``).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes

from webhook_operator import GROUP, VERSION
from webhook_operator.delivery.transport import PooledTransport

SA_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_path: str | None
    verify: bool
    cert_path: str | None
    key_path: str | None
    token: str | None
    token_path: str | None
    default_namespace: str | None


def load_credentials() -> Credentials:
    config = kubernetes.client.Configuration()
    token_path: str | None = None
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
        token_path = str(SA_TOKEN_PATH)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    auth = (config.api_key or {}).get("authorization") or (config.api_key or {}).get("BearerToken")
    token = auth.split(" ", 1)[1] if auth and auth.startswith("Bearer ") else auth
    return Credentials(
        server=config.host.rstrip("/"),
        ca_path=config.ssl_ca_cert,
        verify=bool(config.verify_ssl),
        cert_path=config.cert_file,
        key_path=config.key_file,
        token=token,
        token_path=token_path,
        default_namespace=None,
    )


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


class KubeClient:
    """JSON over one pooled HTTP/2-free connection pool; counts the requests it makes."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._client = httpx.AsyncClient(
            base_url=credentials.server,
            # The deliveries' pool: with httpx's own, a status write from a mostly idle pool cost a
            # third more CPU (see LinearConnectionPool).
            transport=PooledTransport(
                ssl_context=ssl_context(credentials),
                limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
            ),
            timeout=httpx.Timeout(30.0),
            trust_env=False,
        )
        self._token = credentials.token
        self._token_read = time.monotonic()
        self.requests = 0

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
            response = await self._client.request(
                method,
                path,
                content=content,
                params=params,
                headers=self._headers(content_type if content is not None else None),
            )
        except httpx.TransportError as exc:
            # Callers handle an unreachable or failing API server as OSError; httpx's errors are not one.
            raise ConnectionError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                status = response.json()
                reason, message = str(status.get("reason", "")), str(status.get("message", response.text))
            except ValueError:
                reason, message = response.reason_phrase, response.text[:500]
            raise ApiError(response.status_code, reason, message)
        result = response.json() if response.content else {}
        return result if isinstance(result, dict) else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_items(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path, params=params)
        items = result.get("items", [])
        return items if isinstance(items, list) else []

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
        await self._client.aclose()
