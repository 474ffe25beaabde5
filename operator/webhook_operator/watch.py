"""A lean list-then-watch loop for WebhookEvents, outside kopf.

Events are the operator's hot path: each one is seen at least twice (created, then our own
status write). kopf spends a per-object worker, a body wrapper and a logger on each watch
event; here a watch event costs one ``json.loads`` and one call. The loop follows the
API conventions: a paginated list, then a watch from the list's resourceVersion with
bookmarks, a fresh watch from the last version seen when a stream ends, and a new list
when the server says that version is gone (410). Before each page of a list and each watch
event it awaits ``capacity()``, which returns once the consumer can take more, so a backlog
of any size stays in the API server rather than in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from webhook_operator.apiretry import backoff_delay, retry_after_of
from webhook_operator.kube import ApiError, KubeClient

log = logging.getLogger(__name__)

Handler = Callable[[str | None, dict[str, Any]], Awaitable[None]]
Waiter = Callable[[], Awaitable[None]]
PAGE_SIZE = 250
WATCH_TIMEOUT_S = 300
# A failed list or watch is tried again after backoff_delay(failures, base=0.2, cap=5).
RETRY_BASE_S, RETRY_CAP_S = 0.2, 5.0


class Gone(Exception):
    """The resourceVersion to watch from has been compacted away: list again."""


class ResourceWatch:
    """Lists ``path`` (type ``None`` per item, as kopf reports a listing), then streams its changes."""

    def __init__(
        self,
        kube: KubeClient,
        path: str,
        handle: Handler,
        *,
        capacity: Waiter | None = None,
        page_size: int = PAGE_SIZE,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        self.kube = kube
        self.path = path
        self.handle = handle
        self.capacity = capacity
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.listed = asyncio.Event()  # set once the first full list has been handed over
        self.lists = 0
        self.watches = 0

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                self.listed.set()
                failures = 0
                while True:
                    version = await self._watch(version)
                    failures = 0
            except Gone:
                log.info("watch of %s expired; listing again", self.path)
                continue
            except (ApiError, OSError, ValueError) as exc:
                failures += 1
                delay = backoff_delay(failures, retry_after=retry_after_of(exc), base=RETRY_BASE_S, cap=RETRY_CAP_S)
                log.warning("watching %s failed (%s); retrying in %.1fs", self.path, exc, delay)
                await asyncio.sleep(delay)
            except Exception:  # a bug must not end the watch: every event would then go undelivered
                failures += 1
                delay = backoff_delay(failures, base=RETRY_BASE_S, cap=RETRY_CAP_S)
                log.exception("watching %s failed unexpectedly; listing again in %.1fs", self.path, delay)
                await asyncio.sleep(delay)

    async def _wait_until_idle(self) -> None:
        if self.capacity is not None:
            await self.capacity()

    async def _list(self) -> str:
        self.lists += 1
        token: str | None = None
        while True:
            await self._wait_until_idle()
            params = {"limit": str(self.page_size)}
            if token:
                params["continue"] = token
            try:
                page = await self.kube.request("GET", self.path, params=params)
            except ApiError as exc:
                if exc.status == 410:  # the continue token expired mid-list
                    raise Gone() from exc
                raise
            for item in page.get("items") or ():
                await self.handle(None, item)
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                return str(meta.get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        """One watch stream; returns the last resourceVersion seen, to resume from."""
        self.watches += 1
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        try:
            async for line in self.kube.stream_lines(
                self.path, params=params, read_timeout_s=self.watch_timeout_s + 30
            ):
                version = await self._one(line, version)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone() from exc
            raise
        return version

    async def _one(self, line: bytes, version: str) -> str:
        """Hand over one watch event; returns the resourceVersion to resume from."""
        if not line.strip():
            return version
        item = json.loads(line)
        kind = item.get("type")
        obj = item.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message", "")))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind == "BOOKMARK":
            return version
        await self._wait_until_idle()
        await self.handle(kind, obj)
        return version
