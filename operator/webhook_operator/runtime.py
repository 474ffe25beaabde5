"""Wiring: the one set of long-lived parts (API client, index, engine, metrics) the handlers share,
and the leader part (event watches, engine loops) started and stopped with the Lease."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server

from webhook_operator import __version__
from webhook_operator.apiretry import with_retries
from webhook_operator.delivery.engine import DeliveryEngine
from webhook_operator.delivery.transport import DeliveryClient, make_client
from webhook_operator.dns import HostResolver
from webhook_operator.index import WebhookIndex
from webhook_operator.kube import ApiError, KubeClient, load_credentials, resource_path
from webhook_operator.leader import ElectionConfig, LeaderElector, holder_identity
from webhook_operator.metrics import Metrics
from webhook_operator.probes import Facts, api_check_loop
from webhook_operator.secrets import list_signing_secrets
from webhook_operator.settings import Settings
from webhook_operator.watch import ResourceWatch
from webhook_operator.webhooks import WebhookController

if TYPE_CHECKING:
    from webhook_operator.bus.worker import BusWorker
    from webhook_operator.ingress.server import IngressServer

log = logging.getLogger(__name__)
USER_AGENT = f"webhook-operator/{__version__}"
WATCH_TASK_PREFIX = "watch-events-"


@dataclass
class Runtime:
    settings: Settings
    kube: KubeClient
    index: WebhookIndex
    metrics: Metrics
    client: DeliveryClient
    webhooks: WebhookController
    engine: DeliveryEngine
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)  # for the whole life of the process
    ingress: IngressServer | None = None  # with --ingress-port
    # The Lease's own connections: renewals must not queue behind bulk work (2,000 webhooks reconciled
    # at a take-over kept the shared pool busy past the 10 s renew deadline).
    lease_kube: KubeClient | None = None
    bus: BusWorker | None = None  # with --event-bus: every replica fans out and delivers
    # The leader part: the WebhookEvent watches, the engine's loops. Started on taking the Lease,
    # stopped on losing it or on shutdown; kopf's Webhook/Secret watches run on every replica.
    leader_tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    watches: list[ResourceWatch] = field(default_factory=list)
    elector: LeaderElector | None = None
    loaded: bool = False
    leading: bool = False
    stopping: bool = False

    def facts(self) -> Facts:
        watching = bool(self.watches) and all(w.listed.is_set() for w in self.watches)
        running = all(not t.done() for t in self.leader_tasks if t.get_name().startswith(WATCH_TASK_PREFIX))
        return Facts(
            loaded=self.loaded,
            leading=self.leading,
            watches_listed=watching and running,
            api_age_s=self.kube.seconds_since_response(),
            bus_connected=None if self.bus is None else self.bus.connected(),
        )


def _make_engine(
    settings: Settings,
    kube: KubeClient,
    index: WebhookIndex,
    metrics: Metrics,
    client: DeliveryClient,
    webhooks: WebhookController,
) -> DeliveryEngine:
    engine = DeliveryEngine(
        settings,
        kube,
        index,
        metrics,
        client,
        on_delivery_final=lambda state, ok, code: webhooks.delivery_completed(state, succeeded=ok, status_code=code),
        on_attempt=webhooks.attempt_done,
    )
    webhooks.send_test = engine.send_test
    return engine


def build_runtime(settings: Settings, kube: KubeClient | None = None) -> Runtime:
    kube = kube or KubeClient(load_credentials())
    index = WebhookIndex()
    metrics = Metrics()
    # One bounded, cached resolver for reconciles and deliveries: dead DNS holds few threads (dns.py).
    resolver = HostResolver()
    index.on_filtered_out = lambda state, error: metrics.filtered_out(state.namespace, state.name, error is not None)
    client = make_client(
        policy=settings.destination_policy,
        ca_bundle=settings.ca_bundle,
        max_connections=settings.max_concurrency,
        user_agent=USER_AGENT,
        resolve=resolver,
    )
    webhooks = WebhookController(settings, kube, index, metrics)
    webhooks.resolve = resolver
    engine = _make_engine(settings, kube, index, metrics, client, webhooks)
    runtime = Runtime(settings, kube, index, metrics, client, webhooks, engine)
    if settings.event_bus is not None:
        # Imported only in bus mode (nats-py).
        from webhook_operator.bus.worker import BusWorker

        runtime.bus = BusWorker(settings, settings.event_bus, index, metrics, client, holder_identity())
    webhooks.is_leader = lambda: runtime.leading
    metrics.leader.set(0)
    return runtime


async def start(runtime: Runtime, *, serve_metrics: bool = True) -> None:
    """Load every webhook (concurrently), then lead at once or campaign for the Lease in the background."""
    settings = runtime.settings
    if serve_metrics:
        start_http_server(settings.metrics_port, settings.bind_address, registry=runtime.metrics.registry)
    if settings.ingress_port:
        # Imported only when served (about 8 MB of modules otherwise unused). Started before the
        # webhooks load: in CR mode a published event waits in the API server anyway.
        from webhook_operator.ingress.server import make_ingress_server

        sink = None
        if runtime.bus is not None:
            from webhook_operator.bus.sink import NatsEventSink

            sink = NatsEventSink(runtime.bus)
            runtime.tasks.append(asyncio.create_task(runtime.bus.connect(), name="bus-connect"))
        runtime.ingress = make_ingress_server(settings, runtime.kube, runtime.metrics, sink)
        await runtime.ingress.start()
    runtime.tasks.append(asyncio.create_task(api_check_loop(runtime.kube), name="api-check"))
    if not settings.leader_election:
        runtime.leading = True  # one process, as before: it writes from the first reconcile
        runtime.metrics.leader.set(1)
    scopes: list[str | None] = [*settings.namespaces] or [None]
    for namespace in scopes:
        await load_webhooks(runtime, namespace)
    runtime.loaded = True
    log.info("loaded %d webhook(s)", len(runtime.index))
    if runtime.bus is not None:
        # Every replica, leader or not, once its index is loaded: fan-out matches from it.
        runtime.tasks.append(asyncio.create_task(runtime.bus.run(), name="bus"))
    if not settings.leader_election:
        _start_leader_part(runtime)
        return
    runtime.lease_kube = KubeClient(runtime.kube.credentials, max_connections=2)
    runtime.elector = LeaderElector(
        runtime.lease_kube,
        ElectionConfig(settings.leader_election_namespace, settings.leader_election_id, holder_identity()),
        on_started=lambda resumed: _take_lead(runtime, resumed=resumed),
        on_stopped=lambda: _lose_lead(runtime),
        on_superseded=lambda: _drop_suspended(runtime),
    )
    log.info(
        "campaigning for Lease %s/%s as %s",
        settings.leader_election_namespace,
        settings.leader_election_id,
        runtime.elector.config.identity,
    )
    runtime.tasks.append(asyncio.create_task(runtime.elector.run(), name="leader-election"))


async def _take_lead(runtime: Runtime, *, resumed: bool = False) -> None:
    if runtime.stopping or runtime.leading:
        return
    if runtime.engine.suspended:
        if resumed:  # nobody led meanwhile: what the engine answered is written now, not sent again
            runtime.engine.resume()
        else:
            await _drop_suspended(runtime)
    runtime.leading = True
    runtime.metrics.leader.set(1)
    # Off the elector's task, which must keep renewing the Lease meanwhile.
    runtime.leader_tasks.append(asyncio.create_task(_lead(runtime), name="take-over"))


async def _lead(runtime: Runtime) -> None:
    await runtime.webhooks.reconcile_deferred()
    await _read_written_health(runtime)
    if runtime.leading and not runtime.stopping:
        _start_leader_part(runtime)


async def _read_written_health(runtime: Runtime) -> None:
    """The last leader's final health writes (made just before it released the Lease) may not have reached
    this replica's watch yet; counted on from an older status, they would be lost. Read them first."""
    scopes: list[str | None] = [*runtime.settings.namespaces] or [None]
    for namespace in scopes:
        path = resource_path("webhooks", namespace)

        async def read(path: str = path) -> None:
            async for page in runtime.kube.list_pages(path):
                runtime.webhooks.follow_written(page)

        try:
            await with_retries(read, what=f"listing {path}", attempts=5, give_up=lambda: not runtime.leading)
        except Exception as exc:  # the watch's view stays; a health figure may miss the last interval
            log.warning("reading written health failed: %s", exc)


def _start_leader_part(runtime: Runtime) -> None:
    settings = runtime.settings
    runtime.leader_tasks.append(asyncio.create_task(runtime.webhooks.health_loop(), name="health"))
    runtime.leader_tasks.append(asyncio.create_task(runtime.engine.expiry_loop(), name="event-ttl"))
    if runtime.bus is not None:
        # One writer of every Webhook's health: outcomes of all replicas, from the request log.
        runtime.leader_tasks.append(asyncio.create_task(runtime.bus.fold_health(runtime.webhooks), name="bus-health"))
        # spec.rateLimit and Ordered: one bucket and one order per webhook, so one puller (bus/control.py).
        runtime.leader_tasks.append(asyncio.create_task(runtime.bus.control(), name="bus-controlled"))
    # WebhookEvents are watched here, not through kopf: see watch.py.
    scopes: list[str | None] = [*settings.namespaces] or [None]
    for namespace in scopes:
        watch = ResourceWatch(
            runtime.kube,
            resource_path("webhookevents", namespace),
            runtime.engine.on_event,
            capacity=runtime.engine.wait_for_capacity,
        )
        runtime.watches.append(watch)
        runtime.leader_tasks.append(asyncio.create_task(watch.run(), name=f"{WATCH_TASK_PREFIX}{namespace or 'all'}"))
    runtime.leader_tasks.append(asyncio.create_task(_order_once_listed(runtime), name="ordering"))
    log.info("delivering")


async def _order_once_listed(runtime: Runtime) -> None:
    """spec.ordering: Ordered deliveries start once every recorded event is known (the first full list)."""
    engine = runtime.engine
    await asyncio.gather(*(w.listed.wait() for w in runtime.watches))
    engine.order_ready.set()


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    current = asyncio.current_task()
    ours = [t for t in tasks if t is not current]
    for task in ours:
        task.cancel()
    await asyncio.gather(*ours, return_exceptions=True)
    tasks.clear()


async def _lose_lead(runtime: Runtime) -> None:
    """The Lease could not be renewed: stop every write and every new attempt at once (a new leader may
    be starting). The engine is suspended, not dropped: attempts already sent finish, and if this
    process leads again before anyone else does (an API-server outage cut off every replica), their
    outcomes are written then instead of being sent again by a new term."""
    if not runtime.leading:
        return
    runtime.leading = False
    runtime.metrics.leader.set(0)
    runtime.watches.clear()
    runtime.engine.suspend()
    await _cancel(runtime.leader_tasks)


async def _drop_suspended(runtime: Runtime) -> None:
    """Another replica has led since we stopped: the suspended engine's work is that leader's now."""
    if not runtime.engine.suspended:
        return
    await runtime.engine.abort()
    s = runtime
    runtime.engine = _make_engine(s.settings, s.kube, s.index, s.metrics, s.client, s.webhooks)


async def _step_down(runtime: Runtime) -> None:
    """Shutdown of the leader: no new work, in-flight attempts finish and are recorded, health flushed."""
    leader_tasks, runtime.leader_tasks = runtime.leader_tasks, []
    watch_tasks = [t for t in leader_tasks if t.get_name().startswith(WATCH_TASK_PREFIX)]
    await _cancel(watch_tasks)
    await runtime.engine.drain(runtime.settings.shutdown_grace_s)
    await _cancel(leader_tasks)
    if runtime.leading:  # not lost meanwhile
        try:
            await runtime.webhooks.flush_health(everything=True)
            if runtime.bus is not None:
                await runtime.bus.ack_folded()  # written: the next leader must not count them again
        except Exception:  # shutting down: report, do not mask the exit
            log.exception("final health flush failed")
    runtime.leading = False
    runtime.metrics.leader.set(0)


async def load_webhooks(runtime: Runtime, namespace: str | None) -> None:
    """Reconcile every Webhook, listed page by page; an API error (a server still starting answers 429
    "storage is (re)initializing") starts the list again after a backoff: a reconcile is idempotent."""
    path = resource_path("webhooks", namespace)

    async def load() -> None:
        # The signing-key Secrets in one list, not a GET per webhook (1,000 webhooks: 1,000 GETs). Should
        # the list fail, each webhook reads its own: a Secret it cannot read leaves it resolving, not gone.
        try:
            runtime.webhooks.listed_secrets = await list_signing_secrets(
                runtime.kube, (namespace,) if namespace else ()
            )
        except (ApiError, OSError) as exc:
            log.warning("listing the signing-key Secrets failed (%s); each webhook reads its own", exc)
            runtime.webhooks.listed_secrets = None
        try:
            async for page in runtime.kube.list_pages(path):
                for body in page:
                    body.setdefault("kind", "Webhook")
                await runtime.webhooks.reconcile_all(page)
        finally:
            runtime.webhooks.listed_secrets = None

    await with_retries(load, what=f"listing {path}")


async def stop(runtime: Runtime) -> None:
    """Graceful shutdown (SIGTERM): drain and record in-flight attempts, flush health, release the Lease."""
    if runtime.ingress is not None:
        await runtime.ingress.stop()
    runtime.stopping = True

    async def leader_part() -> None:
        if runtime.leading:
            await _step_down(runtime)
        else:
            await _cancel(runtime.leader_tasks)
            await runtime.engine.abort()

    # Side by side, so that both fit in one --shutdown-grace.
    drains = [leader_part()]
    if runtime.bus is not None:
        drains.append(runtime.bus.drain(runtime.settings.shutdown_grace_s))
    await asyncio.gather(*drains)
    await _cancel(runtime.tasks)
    if runtime.bus is not None:
        await runtime.bus.close()
    if runtime.elector is not None:
        await runtime.elector.release()
    await runtime.client.aclose()
    if runtime.lease_kube is not None:
        await runtime.lease_kube.close()
    await runtime.kube.close()
