"""Wiring: the one set of long-lived parts (API client, index, engine, metrics) the handlers share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from webhook_operator import __version__
from webhook_operator.delivery.engine import DeliveryEngine
from webhook_operator.delivery.transport import DeliveryClient, make_client
from webhook_operator.index import WebhookIndex
from webhook_operator.kube import ApiError, KubeClient, load_credentials, resource_path
from webhook_operator.metrics import Metrics
from webhook_operator.settings import Settings
from webhook_operator.watch import ResourceWatch
from webhook_operator.webhooks import WebhookController

if TYPE_CHECKING:
    from webhook_operator.ingress.server import IngressServer

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
    ingress: IngressServer | None = None  # with --ingress-port


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
    if settings.ingress_port:
        # Imported only when served (about 8 MB of modules otherwise unused). Started before the
        # webhooks load: in CR mode a published event waits in the API server anyway.
        from webhook_operator.ingress.server import make_ingress_server

        runtime.ingress = make_ingress_server(settings, runtime.kube, runtime.metrics)
        await runtime.ingress.start()
    scopes: list[str | None] = [*settings.namespaces] or [None]
    for namespace in scopes:
        async for page in _pages_with_retries(runtime.kube, resource_path("webhooks", namespace)):
            for body in page:
                body.setdefault("kind", "Webhook")
                await runtime.webhooks.reconcile(body)
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


async def _pages_with_retries(kube: KubeClient, path: str, attempts: int = 30) -> AsyncIterator[list[dict[str, Any]]]:
    """List page by page, riding out an API server that is still starting (429 "storage is
    (re)initializing", 5xx) before the first page; a failure after that is raised."""
    for attempt in range(attempts):
        pages = kube.list_pages(path)
        try:
            first = await anext(pages)
        except ApiError as exc:
            if (exc.status != 429 and exc.status < 500) or attempt == attempts - 1:
                raise
            log.info("listing %s: %s; retrying", path, exc)
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
            continue
        yield first
        async for page in pages:
            yield page
        return


async def stop(runtime: Runtime) -> None:
    if runtime.ingress is not None:
        await runtime.ingress.stop()
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    try:
        await runtime.webhooks.flush_health(everything=True)
    except Exception:  # shutting down: report, do not mask the exit
        log.exception("final health flush failed")
    await runtime.client.aclose()
    await runtime.kube.close()
