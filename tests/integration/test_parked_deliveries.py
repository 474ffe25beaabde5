"""The delivery engine in this process against the real API server and real HTTPS receivers: a retry
due later leaves memory and is read again when due; a hanging webhook's backlog leaves memory
too, while another webhook's first attempts go on; no attempt starts while status writes fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.kube_helpers import KubectlFn, create, event_manifest
from tests.support.receiver import Receiver, Reply
from webhook_operator.delivery.engine import DeliveryEngine, event_path
from webhook_operator.delivery.ratelimit import RateLimit
from webhook_operator.delivery.transport import make_client
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.kube import KubeClient
from webhook_operator.kubeconfig import from_kubeconfig
from webhook_operator.metrics import Metrics
from webhook_operator.model import WebhookSpec
from webhook_operator.policy import DestinationPolicy, parse_url
from webhook_operator.retry import RetryPolicy
from webhook_operator.settings import Settings
from webhook_operator.signing import message_id

pytestmark = pytest.mark.integration

KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = KubeClient(from_kubeconfig([cluster.kubeconfig]))
    yield client
    await client.close()


def state(namespace: str, name: str, url: str, events: tuple[str, ...], retry: RetryPolicy, limit: int) -> WebhookState:
    return WebhookState(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        generation=1,
        spec=WebhookSpec(url=url, events=events, retry=retry),
        body={},
        ready=True,
        url=parse_url(url, allow_http=False),
        keys=(KEY,),
        limiter=asyncio.Semaphore(limit),
    )


async def until(predicate: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def make_engine(kube: KubeClient, index: WebhookIndex, ca_bundle: Path, settings: Settings) -> DeliveryEngine:
    client = make_client(
        policy=DestinationPolicy.from_strings(["127.0.0.0/8"]), ca_bundle=str(ca_bundle), user_agent="test"
    )
    return DeliveryEngine(settings, kube, index, Metrics(), client, lambda *_: None)


async def phase(kube: KubeClient, namespace: str, name: str) -> str | None:
    body = await kube.get(event_path(namespace, name)) or {}
    return (body.get("status") or {}).get("phase")


async def test_a_retry_due_later_leaves_memory_and_is_read_again_when_due(
    kube: KubeClient, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path
) -> None:
    receiver.script("/hook", Reply(status=503), Reply(status=200))
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=3, backoff_seconds=2, max_backoff_seconds=2, timeout_seconds=5)
    hook = state(namespace, "hook", receiver.url("/hook"), ("User.Created",), retry, 10)
    index.put(hook)
    engine = await make_engine(kube, index, ca_bundle, Settings())
    engine.park_after_s = 0.2
    name = create(kubectl, namespace, event_manifest("User.Created", {"big": "x" * 4096}))
    body = await kube.get(event_path(namespace, name))
    assert body is not None
    try:
        await engine.on_event("ADDED", body)
        await until(lambda: len(receiver.received()) == 1 and engine.parked_events == 1)
        assert engine.active_jobs == 0, "the event waiting for its retry is still held in memory"
        parked = engine._parked._by_uid[body["metadata"]["uid"]]
        assert (parked.namespace, parked.name) == (namespace, name)

        # Our own status write comes back through the watch: it changes nothing while parked.
        written = await kube.get(event_path(namespace, name))
        assert written is not None and written["status"]["deliveries"][0]["outcome"] == "Retrying"
        await engine.on_event("MODIFIED", written)
        assert engine.active_jobs == 0 and engine.parked_events == 1

        # When due it is read from the API server again and delivered, with the same webhook-id.
        await until(lambda: len(receiver.received()) == 2, within_s=10)
        first, second = receiver.received()
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert second.headers["webhook-id"] == message_id(body["metadata"]["uid"], hook.uid)
        assert b'"big"' in second.body
        deadline = time.monotonic() + 10
        while await phase(kube, namespace, name) != "Delivered":
            assert time.monotonic() < deadline, "not Delivered after the re-read retry"
            await asyncio.sleep(0.1)
        assert engine.parked_events == 0
    finally:
        await engine.abort()
        await engine.client.aclose()


async def test_a_hanging_webhooks_backlog_leaves_memory_while_another_webhook_delivers(
    kube: KubeClient, kubectl: KubectlFn, namespace: str, receiver: Receiver, tls_ca: Any, ca_bundle: Path
) -> None:
    hang_until = time.time() + 4.0
    slow = Receiver(tls_ca)
    slow.rule = lambda path, headers: (
        Reply(delay_s=max(0.0, hang_until - time.time())) if time.time() < hang_until else None
    )
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=10, backoff_seconds=0.2, max_backoff_seconds=1, timeout_seconds=2)
    index.put(state(namespace, "slow", slow.url("/slow"), ("Slow.Ping",), retry, 2))
    index.put(state(namespace, "fast", receiver.url("/fast"), ("Fast.Ping",), retry, 2))
    engine = await make_engine(kube, index, ca_bundle, Settings(max_concurrency=4, per_webhook_concurrency=2))
    engine.max_waiting_per_webhook = 3
    slow_names = [create(kubectl, namespace, event_manifest("Slow.Ping", {"i": i})) for i in range(12)]
    fast_names = [create(kubectl, namespace, event_manifest("Fast.Ping", {"i": i})) for i in range(6)]
    try:
        for name in slow_names:
            body = await kube.get(event_path(namespace, name))
            assert body is not None
            await engine.on_event("ADDED", body)
        await until(lambda: engine.parked_events >= 12 - 3, within_s=5)
        assert engine.active_jobs <= 3, "a hanging webhook's backlog is held in memory"
        assert not engine.backlogged()

        started = time.monotonic()
        for name in fast_names:
            body = await kube.get(event_path(namespace, name))
            assert body is not None
            await engine.on_event("ADDED", body)
        await until(lambda: len(receiver.received()) == 6, within_s=5)
        assert time.monotonic() - started < 2.0, "the fast webhook waited for the hanging one"

        # Once the slow receiver answers again, every parked event is read back and delivered.
        async def all_delivered() -> bool:
            phases = [await phase(kube, namespace, name) for name in slow_names]
            return all(p == "Delivered" for p in phases)

        deadline = time.monotonic() + 60
        while not await all_delivered():
            assert time.monotonic() < deadline, "parked events of the slow webhook were not all delivered"
            await asyncio.sleep(0.5)
        ok = {r.headers["webhook-id"] for r in slow.received() if r.status == 200}
        assert len(ok) == 12
    finally:
        await engine.abort()
        await engine.client.aclose()
        slow.close()


async def test_no_new_attempt_starts_while_status_writes_fail(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path, tmp_path: Path
) -> None:
    """An attempt whose outcome cannot be recorded would be repeated by the next leader: while status writes
    meet transient API errors (etcd restarting), deliveries already recorded wait instead of piling up."""
    proxy = FaultProxy(cluster.kubeconfig)
    kube = KubeClient(from_kubeconfig([proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")]))
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=3, backoff_seconds=0.2, max_backoff_seconds=1, timeout_seconds=5)
    index.put(state(namespace, "hook", receiver.url("/hook"), ("User.Created",), retry, 10))
    engine = await make_engine(kube, index, ca_bundle, Settings())
    first, second = (create(kubectl, namespace, event_manifest("User.Created", {"i": i})) for i in range(2))
    try:
        fault = proxy.add(
            Fault("PATCH", rf"/apis/webhook-operator\.io/v1alpha1/namespaces/{namespace}/webhookevents/.+/status")
        )
        await engine.on_event("ADDED", await kube.get(event_path(namespace, first)) or {})
        await until(lambda: fault.hits >= 2, within_s=10)  # delivered, and its status write is being retried
        await engine.on_event("ADDED", await kube.get(event_path(namespace, second)) or {})
        await asyncio.sleep(2)
        assert len(receiver.received()) == 1, "an attempt started while its outcome could not be recorded"

        proxy.clear()
        await until(lambda: len(receiver.received()) == 2, within_s=15)
        deadline = time.monotonic() + 15
        while {await phase(kube, namespace, first), await phase(kube, namespace, second)} != {"Delivered"}:
            assert time.monotonic() < deadline, "not both Delivered once writes succeed"
            await asyncio.sleep(0.2)
    finally:
        await engine.abort()
        await engine.client.aclose()
        await kube.close()
        proxy.close()


async def test_answered_but_unrecorded_attempts_stay_bounded_when_status_writes_lag(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path, tmp_path: Path
) -> None:
    """Everything a leader killed at any moment leaves for the next one to repeat: attempts sent whose
    outcome is not yet written. With slow status writes (a busy API server) and a fast receiver, no new
    event is taken up while --max-concurrency answered outcomes wait for their write, instead of the
    answered ones growing with the write backlog."""
    proxy = FaultProxy(cluster.kubeconfig)
    kube = KubeClient(from_kubeconfig([proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")]))
    direct = KubeClient(from_kubeconfig([cluster.kubeconfig]))
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=3, backoff_seconds=0.2, max_backoff_seconds=1, timeout_seconds=5)
    for name in ("a", "b"):
        index.put(state(namespace, name, receiver.url(f"/{name}"), ("User.Created",), retry, 10))
    engine = await make_engine(kube, index, ca_bundle, Settings(max_concurrency=4, per_webhook_concurrency=10))
    names = [create(kubectl, namespace, event_manifest("User.Created", {"i": i})) for i in range(50)]
    proxy.add(
        Fault(
            "PATCH",
            rf"/apis/webhook-operator\.io/v1alpha1/namespaces/{namespace}/webhookevents/.+/status",
            hang_s=0.05,
            forward=True,
            serial=True,  # 20 writes/s: the receivers answer far faster than the API server records
        )
    )

    async def recorded() -> int:
        listed = await direct.get(f"/apis/webhook-operator.io/v1alpha1/namespaces/{namespace}/webhookevents") or {}
        return sum(
            1
            for item in listed.get("items") or ()
            for entry in (item.get("status") or {}).get("deliveries") or ()
            if entry.get("outcome") == "Succeeded"
        )

    try:

        async def feed() -> None:  # as the event watch does: new events wait while the engine is backlogged
            for name in names:
                await engine.wait_for_capacity()
                await engine.on_event("ADDED", await direct.get(event_path(namespace, name)) or {})

        feeding = asyncio.ensure_future(feed())
        widest = 0
        deadline = time.monotonic() + 60
        while True:
            sent = len(receiver.received())  # read first: the gap measured can only be smaller than the true one
            done = await recorded()
            widest = max(widest, sent - done)
            if done == 100:
                break
            assert time.monotonic() < deadline, f"only {done} of 100 deliveries recorded"
            await asyncio.sleep(0.05)
        await feeding
        assert len(receiver.received()) == 100
        # What was taken up before the backlog counted: 4 answered, 16 queued for a global slot (4 per
        # slot), 4 in flight, and some waiting for their webhook's own slots (16-26 measured; 58 with
        # the engine before this bound).
        assert widest <= 40, f"{widest} attempts were answered but not recorded at once (--max-concurrency 4)"
    finally:
        await engine.abort()
        await engine.client.aclose()
        await kube.close()
        await direct.close()
        proxy.close()


async def test_a_delivery_waiting_for_a_not_ready_webhook_leaves_memory(
    kube: KubeClient, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr("webhook_operator.delivery.engine.NOT_READY_PARK_S", 0.5)
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=3, backoff_seconds=0.2, max_backoff_seconds=1, timeout_seconds=5)
    hook = state(namespace, "hook", receiver.url("/hook"), ("User.Created",), retry, 10)
    hook.ready, hook.resolving = False, True  # e.g. an API error while reconciling it
    index.put(hook)
    engine = await make_engine(kube, index, ca_bundle, Settings())
    engine.park_after_s = 0.3
    name = create(kubectl, namespace, event_manifest("User.Created", {"i": 1}))
    try:
        await engine.on_event("ADDED", await kube.get(event_path(namespace, name)) or {})
        await until(lambda: engine.parked_events == 1, within_s=5)
        assert engine.active_jobs == 0, "the delivery waiting for its webhook is still held in memory"
        await asyncio.sleep(1.5)  # read again and parked again while the webhook stays not Ready
        assert receiver.received() == [] and engine.active_jobs + engine.parked_events == 1
        written = await kube.get(event_path(namespace, name)) or {}
        outcomes = [d["outcome"] for d in written["status"]["deliveries"]]
        assert outcomes == ["Pending"], "the waiting delivery is not recorded"

        hook.ready, hook.resolving = True, False
        await until(lambda: len(receiver.received()) == 1, within_s=5)
        deadline = time.monotonic() + 10
        while await phase(kube, namespace, name) != "Delivered":
            assert time.monotonic() < deadline, "not Delivered once the webhook is Ready"
            await asyncio.sleep(0.1)
    finally:
        await engine.abort()
        await engine.client.aclose()


async def test_an_old_watch_event_during_the_re_read_of_a_parked_event_repeats_nothing(
    cluster: Cluster, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path, tmp_path: Path
) -> None:
    """While a parked event is read again, the watch may still bring an older version of it (the late
    echo of an earlier write): resuming from that would send deliveries already recorded once more."""
    receiver.script("/b", Reply(status=503), Reply(status=200))
    proxy = FaultProxy(cluster.kubeconfig)
    kube = KubeClient(from_kubeconfig([proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")]))
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=3, backoff_seconds=1, max_backoff_seconds=1, timeout_seconds=5)
    for name in ("a", "b"):
        index.put(state(namespace, name, receiver.url(f"/{name}"), ("User.Created",), retry, 10))
    engine = await make_engine(kube, index, ca_bundle, Settings())
    engine.park_after_s = 0.2
    name = create(kubectl, namespace, event_manifest("User.Created", {"i": 1}))
    stale = await kube.get(event_path(namespace, name)) or {}  # as first watched: no status yet
    try:
        await engine.on_event("ADDED", stale)
        await until(lambda: engine.parked_events == 1)  # a Succeeded, b waits for its retry
        read = proxy.add(
            Fault(
                "GET",
                rf"/apis/webhook-operator\.io/v1alpha1/namespaces/{namespace}/webhookevents/{name}",
                hang_s=1.0,
                forward=True,
            )
        )
        await until(lambda: read.hits >= 1, within_s=10)  # due: being read again
        await engine.on_event("MODIFIED", stale)
        deadline = time.monotonic() + 15
        while await phase(kube, namespace, name) != "Delivered":
            assert time.monotonic() < deadline, "not Delivered after the retry"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        paths = [r.path for r in receiver.received()]
        assert paths.count("/a") == 1, f"webhook a was sent the event {paths.count('/a')} times"
        assert paths.count("/b") == 2
    finally:
        await engine.abort()
        await engine.client.aclose()
        await kube.close()
        proxy.close()


async def test_a_backlog_behind_a_rate_limit_waits_outside_memory(
    kube: KubeClient, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path
) -> None:
    """Deliveries that would wait longer than park_after_s for a rate-limit token leave memory and come
    back when their turn nears; the receiver still sees no more than burst + rate x t."""
    index = WebhookIndex()
    retry = RetryPolicy(max_retries=3, backoff_seconds=0.2, max_backoff_seconds=1, timeout_seconds=5)
    hook = state(namespace, "hook", receiver.url("/hook"), ("User.Created",), retry, 10)
    hook.spec = WebhookSpec(
        url=hook.spec.url, events=hook.spec.events, retry=retry, rate_limit=RateLimit(requests_per_second=5, burst=1)
    )
    index.put(hook)
    engine = await make_engine(kube, index, ca_bundle, Settings())
    engine.park_after_s = 1.0
    names = [create(kubectl, namespace, event_manifest("User.Created", {"i": i})) for i in range(25)]
    try:
        for name in names:
            await engine.on_event("ADDED", await kube.get(event_path(namespace, name)) or {})
        await until(lambda: engine.parked_events > 0, within_s=5)
        assert engine.active_jobs <= 10, f"{engine.active_jobs} events held in memory for the rate limit"
        await until(lambda: len(receiver.received()) == 25, within_s=30)
        times = sorted(r.at for r in receiver.received())
        for i, start in enumerate(times):
            within_1s = sum(1 for t in times[i:] if t - start <= 1.0)
            assert within_1s <= 1 + 5 * 1.0 + 1, f"{within_1s} requests within 1 s (limit 5/s, burst 1)"
        assert len({r.headers["webhook-id"] for r in receiver.received()}) == 25
    finally:
        await engine.abort()
        await engine.client.aclose()


async def ordered_engine(
    kube: KubeClient, namespace: str, receiver: Receiver, ca_bundle: Path, retry: RetryPolicy, in_memory: int
) -> tuple[WebhookIndex, DeliveryEngine]:
    """An engine with one Ordered webhook "hook" (uid-hook) at /hook, keeping ``in_memory`` deliveries of
    its order in memory, the first full list taken as done."""
    index = WebhookIndex()
    hook = state(namespace, "hook", receiver.url("/hook"), ("User.Created",), retry, 10)
    hook.spec = WebhookSpec(url=hook.spec.url, events=hook.spec.events, retry=retry, ordered=True)
    index.put(hook)
    engine = await make_engine(kube, index, ca_bundle, Settings())
    engine.max_ordered_in_memory = in_memory
    engine.order_ready.set()
    return index, engine


async def test_an_ordered_backlog_far_from_its_head_waits_outside_memory_and_keeps_its_order(
    kube: KubeClient, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path
) -> None:
    """While an Ordered webhook's head retries, the deliveries far behind it leave memory with their
    place kept in the order; they come back as the head nears and arrive one at a time, in order, once."""
    retry = RetryPolicy(max_retries=5, backoff_seconds=0.3, max_backoff_seconds=0.5, timeout_seconds=5)
    receiver.script("/hook", Reply(503), Reply(503), Reply(503), Reply(200))  # the head retries for ~1 s
    _, engine = await ordered_engine(kube, namespace, receiver, ca_bundle, retry, in_memory=5)
    # Names that sort as they are created: within one second of creationTimestamp the name orders.
    names = [
        create(kubectl, namespace, event_manifest("User.Created", {"i": i}, name=f"ord-{i:03d}")) for i in range(30)
    ]
    try:
        bodies = [await kube.get(event_path(namespace, name)) or {} for name in names]
        for body in bodies:
            await engine.on_event("ADDED", body)
        await until(lambda: engine.parked_events >= 24, within_s=10)
        held = engine.active_jobs
        assert held <= 6, f"{held} events held in memory behind the head"
        await until(lambda: len(receiver.received()) >= 33, within_s=60)
        await asyncio.sleep(0.5)  # room for a repeat, should one come
        order = sorted(bodies, key=lambda b: (b["metadata"]["creationTimestamp"], b["metadata"]["name"]))
        expected = [message_id(b["metadata"]["uid"], "uid-hook") for b in order]
        got = [r.headers["webhook-id"] for r in receiver.received()]
        assert list(dict.fromkeys(got)) == expected, "not in the order of (creationTimestamp, name)"
        assert len(got) == 33, f"{len(got)} requests for 30 events and 3 retries"
        await until(lambda: engine.active_jobs == 0 and engine.parked_events == 0, within_s=10)
        for name in names:
            assert await phase(kube, namespace, name) == "Delivered"
        print(f"held in memory behind the head: {held} of 30 (every one before)")
    finally:
        await engine.abort()
        await engine.client.aclose()


async def test_ordered_deliveries_waiting_outside_memory_come_back_when_the_webhook_is_unordered(
    kube: KubeClient, kubectl: KubectlFn, namespace: str, receiver: Receiver, ca_bundle: Path
) -> None:
    retry = RetryPolicy(max_retries=50, backoff_seconds=0.5, max_backoff_seconds=1, timeout_seconds=5)
    receiver.script("/hook", Reply(503))  # the head fails until the end
    index, engine = await ordered_engine(kube, namespace, receiver, ca_bundle, retry, in_memory=3)
    names = [create(kubectl, namespace, event_manifest("User.Created", {"i": i})) for i in range(12)]
    try:
        for name in names:
            await engine.on_event("ADDED", await kube.get(event_path(namespace, name)) or {})
        await until(lambda: engine.parked_events >= 9, within_s=10)
        receiver.script("/hook", Reply(200))
        unordered = state(namespace, "hook", receiver.url("/hook"), ("User.Created",), retry, 10)
        index.put(unordered)  # the same webhook (uid), now Unordered
        await until(lambda: engine.active_jobs == 0 and engine.parked_events == 0, within_s=15)
        for name in names:
            assert await phase(kube, namespace, name) == "Delivered"
        ok = {r.headers["webhook-id"] for r in receiver.received()}
        assert len(ok) == 12
    finally:
        await engine.abort()
        await engine.client.aclose()
