"""Where published events go. CR mode creates a WebhookEvent; an event bus plugs in behind the same protocol."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from webhook_operator import GROUP, VERSION
from webhook_operator.ingress.parse import IngressError, event_name_prefix, event_object_name
from webhook_operator.kube import ApiError, KubeClient, resource_path

log = logging.getLogger(__name__)

# How long a client is asked to wait when the API server is unreachable, failing or throttling.
SINK_RETRY_AFTER_S = 5


class SinkUnavailable(Exception):
    """The sink cannot take the event now (down, failing or backpressured): the client should retry."""

    def __init__(self, reason: str, retry_after_s: int = SINK_RETRY_AFTER_S) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = max(1, int(retry_after_s))


class EventSink(Protocol):
    async def publish(self, namespace: str, event: str, data: Any, event_id: str | None) -> str:
        """Store the event durably and return its eventId (``event_id`` when given).

        Publishing twice with the same ``event_id`` stores one event. Raises SinkUnavailable
        when the event could not be stored now, IngressError for a rejection the client must fix.
        """
        ...


class PublishGate:
    """At most ``running`` publications at once, at most ``waiting`` more queued; beyond that, SinkUnavailable.

    The ingress shares the operator's API connection pool with the delivery engine's status
    writes: a flood of publishers must queue here, not there, and past a bound be told to retry.
    """

    def __init__(self, running: int = 32, waiting: int = 1024) -> None:
        self._slots = asyncio.Semaphore(running)
        self._max_waiting = waiting
        self.waiting = 0

    @asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self._max_waiting:
            raise SinkUnavailable("the ingress has too many events in progress", retry_after_s=1)
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


def webhook_event(namespace: str, event: str, data: Any, event_id: str | None) -> dict[str, Any]:
    """The WebhookEvent of a publication: named from the id when there is one, so a retry finds it."""
    metadata: dict[str, Any] = {"namespace": namespace}
    spec: dict[str, Any] = {"event": event}
    if event_id is None:
        metadata["generateName"] = event_name_prefix(event)
    else:
        metadata["name"] = event_object_name(namespace, event_id)
        spec["eventId"] = event_id
    if data is not None:
        spec["data"] = data
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WebhookEvent", "metadata": metadata, "spec": spec}


class WebhookEventSink:
    """CR mode: one WebhookEvent per publication, created with the operator's own credentials."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    async def publish(self, namespace: str, event: str, data: Any, event_id: str | None) -> str:
        body = webhook_event(namespace, event, data, event_id)
        try:
            created = await self.kube.create(resource_path("webhookevents", namespace), body)
        except OSError as exc:
            raise SinkUnavailable(f"the Kubernetes API server is unreachable ({exc.__class__.__name__})") from None
        except ApiError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists" and event_id is not None:
                return event_id  # a retried publication: the event exists already
            raise _rejection(exc, namespace) from None
        return event_id if event_id is not None else str((created.get("metadata") or {}).get("uid", ""))


def _rejection(exc: ApiError, namespace: str) -> Exception:
    if exc.status == 429 or exc.status >= 500:
        return SinkUnavailable(f"the Kubernetes API server answered {exc.status} {exc.reason}")
    if exc.status == 404:
        return IngressError(404, f'namespace "{namespace}" not found')
    if exc.status in (400, 422):
        return IngressError(400, f"the event was rejected: {exc.message[:500]}")
    if exc.status == 413:
        return IngressError(413, "the event is too large for the Kubernetes API server")
    log.error("creating a WebhookEvent in %s failed: %s %s", namespace, exc.status, exc.reason)
    return SinkUnavailable(f"the operator could not create the WebhookEvent ({exc.status} {exc.reason})")
