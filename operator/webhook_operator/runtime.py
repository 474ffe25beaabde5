"""Wiring: the one set of long-lived parts (API client, index, engine, metrics) the handlers share."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server

from webhook_operator import __version__
from webhook_operator.apiretry import with_retries
from webhook_operator.delivery.engine import DeliveryEngine
from webhook_operator.delivery.transport import DeliveryClient, make_client
from webhook_operator.index import WebhookIndex
from webhook_operator.kube import KubeClient, load_credentials, resource_path
from webhook_operator.metrics import Metrics
from webhook_operator.settings import Settings
from webhook_operator.watch import ResourceWatch
from webhook_operator.webhooks import WebhookController

log = logging.getLogger(__name__)
USER_AGENT = f"webhook-operator/{__version__}"


@dataclass
class Runtime:
    settings: Settings
    kube: KubeClient
    index: WebhookIndex
    metrics: Metrics
    client: DeliveryClient
    webhooks: WebhookController
    engine: DeliveryEngine
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def build_runtime(settings: Settings, kube: KubeClient | None = None) -> Runtime:
    kube = kube or KubeClient(load_credentials())
    index = WebhookIndex()
    metrics = Metrics()
    client = make_client(
        policy=settings.destination_policy,
        ca_bundle=settings.ca_bundle,
        max_connections=settings.max_concurrency,
        user_agent=USER_AGENT,
    )
    webhooks = WebhookController(settings, kube, index, metrics)
    engine = DeliveryEngine(
        settings,
        kube,
        index,
        metrics,
        client,
        on_delivery_final=lambda state, ok, code: webhooks.delivery_completed(state, succeeded=ok, status_code=code),
    )
    webhooks.send_test = engine.send_test
    return Runtime(settings, kube, index, metrics, client, webhooks, engine)


async def start(runtime: Runtime, *, serve_metrics: bool = True) -> None:
    """Load every webhook before any event is matched, then start the background loops."""
    settings = runtime.settings
    if serve_metrics:
        start_http_server(settings.metrics_port, settings.bind_address, registry=runtime.metrics.registry)
    scopes: list[str | None] = [*settings.namespaces] or [None]
    for namespace in scopes:
        await load_webhooks(runtime, namespace)
    log.info("loaded %d webhook(s); delivering", len(runtime.index))
    runtime.tasks.append(asyncio.create_task(runtime.webhooks.health_loop(), name="health"))
    runtime.tasks.append(asyncio.create_task(runtime.engine.expiry_loop(), name="event-ttl"))
    # WebhookEvents are watched here, not through kopf: see watch.py.
    for namespace in scopes:
        watch = ResourceWatch(
            runtime.kube,
            resource_path("webhookevents", namespace),
            runtime.engine.on_event,
            capacity=runtime.engine.wait_for_capacity,
        )
        runtime.tasks.append(asyncio.create_task(watch.run(), name=f"watch-events-{namespace or 'all'}"))


async def load_webhooks(runtime: Runtime, namespace: str | None) -> None:
    """Reconcile every Webhook, listed page by page; an API error (a server still starting answers 429
    "storage is (re)initializing") starts the list again after a backoff: a reconcile is idempotent."""
    path = resource_path("webhooks", namespace)

    async def load() -> None:
        async for page in runtime.kube.list_pages(path):
            for body in page:
                body.setdefault("kind", "Webhook")
                await runtime.webhooks.reconcile(body)

    await with_retries(load, what=f"listing {path}")


async def stop(runtime: Runtime) -> None:
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    try:
        await runtime.webhooks.flush_health(everything=True)
    except Exception:  # shutting down: report, do not mask the exit
        log.exception("final health flush failed")
    await runtime.client.aclose()
    await runtime.kube.close()
