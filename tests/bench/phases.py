"""The benchmark's phases: baselines, end to end, paced latency, the engine in-process, memory and cost."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from tests.bench.harness import (
    API_VERSION,
    Api,
    CpuMeter,
    Operator,
    RequestKey,
    RssSampler,
    Watch,
    cpu_seconds,
    event_final,
    events_path,
    percentile,
    rss_mb,
    run_bounded,
    webhook_ready,
    webhooks_path,
)
from tests.bench.receiver import ReceiverProcess
from webhook_operator.delivery.attempt import AttemptResult, send
from webhook_operator.delivery.engine import DeliveryEngine
from webhook_operator.delivery.transport import make_client
from webhook_operator.index import WebhookState
from webhook_operator.model import format_time, parse_webhook_spec
from webhook_operator.policy import DestinationPolicy, parse_url
from webhook_operator.runtime import USER_AGENT
from webhook_operator.signing import build_body, format_created_at, generate_signing_key, message_id
from webhook_operator.status import delivered_summary, event_conditions, event_phase

EVENT = "Bench.Event"  # every bench webhook subscribes to it
PACED_EVENT = "Paced.Event"  # only the first ``paced_webhooks`` subscribe to it


def bench_subscriptions(index: int, paced_webhooks: int) -> list[str]:
    return ["Bench.*", "Paced.*"] if index < paced_webhooks else ["Bench.*"]


@dataclass(frozen=True)
class Params:
    concurrency: int
    events: int
    webhooks: int
    payload_bytes: int
    paced_rate: float
    paced_seconds: float
    paced_webhooks: int
    engine_deliveries: int
    scale_webhooks: int
    scale_events: int
    scale_drain_s: float
    many_sizes: tuple[int, ...]  # webhooks in the many-webhooks runs, 100 to a namespace
    many_events: int
    soak_deliveries: tuple[int, ...]
    soak_webhooks: int
    workdir: Path
    kubeconfig: Path
    profile: bool


@dataclass
class Context:
    params: Params
    api: Api
    receiver: ReceiverProcess
    http: httpx.AsyncClient  # for the receiver's stats
    plane_pids: dict[str, int]  # etcd, kube-apiserver, kube-controller-manager
    # The status the operator wrote to one end-to-end event: what the pipeline baseline writes.
    status_template: dict[str, Any] | None = None

    def cpu_meter(self, operator: Operator | None = None) -> CpuMeter:
        pids = {**self.plane_pids, "receiver": self.receiver.pid, "benchmark": os.getpid()}
        if operator is not None:
            pids["operator"] = operator.pid
        return CpuMeter(pids)

    @property
    def pad(self) -> str:
        return "x" * self.params.payload_bytes


def event_body(name: str, event: str, label: str, seq: int, pad: str) -> dict[str, Any]:
    """A WebhookEvent whose data carries its creation time in unix microseconds (``t``)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "WebhookEvent",
        "metadata": {"name": name, "labels": {"bench-run": label}},
        "spec": {"event": event, "data": {"t": time.time_ns() // 1000, "seq": seq, "pad": pad}},
    }


def webhook_body(name: str, url: str, events: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {"url": url, "events": events},
    }


def delivery_body(pad: str) -> bytes:
    """A body the size of a real delivery of the benchmark's events."""
    return build_body(
        hook_id="bench/wh-0",
        event=EVENT,
        created_at=format_created_at(time_now()),
        event_id=str(uuid.uuid4()),
        data={"t": time.time_ns() // 1000, "seq": 0, "pad": pad},
    )


def time_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


async def create_events(
    ctx: Context, namespace: str, label: str, count: int, event_of: Callable[[int], str], *, start: int = 0
) -> tuple[float, float]:
    """Create ``count`` events as fast as the concurrency allows; returns (start, end) wall times."""
    path = events_path(namespace)

    async def one(i: int) -> None:
        await ctx.api.create(path, event_body(f"{label}-{start + i}", event_of(start + i), label, start + i, ctx.pad))

    began = time.time()
    await run_bounded(count, ctx.params.concurrency, one)
    return began, time.time()


def request_delta(before: dict[RequestKey, float], after: dict[RequestKey, float]) -> dict[RequestKey, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def operator_requests(delta: dict[RequestKey, float]) -> tuple[float, dict[str, float]]:
    """Requests the operator made: our API group's and Secrets/Events, minus watches and the benchmark's creates."""
    total = 0.0
    breakdown: dict[str, float] = {}
    for (group, resource, subresource, verb), value in delta.items():
        # The benchmark itself only creates (POST) Webhooks and WebhookEvents and watches.
        ours = group == "webhook-operator.io" and verb not in ("WATCH", "POST")
        ours = ours or (group == "" and resource in ("secrets", "events") and verb != "WATCH")
        if ours:
            total += value
            name = f"{verb} {resource}{'/' + subresource if subresource else ''}"
            breakdown[name] = breakdown.get(name, 0.0) + value
    return total, dict(sorted(breakdown.items(), key=lambda kv: -kv[1]))


# -- 1. baselines ------------------------------------------------------------------------
async def baseline(ctx: Context) -> dict[str, Any]:
    """Raw create rate of the API server (no operator) and raw httpx POST rate to the receiver."""
    p = ctx.params
    namespace = "bench-baseline"
    await ctx.api.ensure_namespace(namespace)
    await create_events(ctx, namespace, "warm", min(100, p.events), lambda _: EVENT)
    meter = ctx.cpu_meter()
    meter.start()
    began, ended = await create_events(ctx, namespace, "base", p.events, lambda _: EVENT)
    meter.stop()
    create_rate = p.events / (ended - began)
    await ctx.api.delete_events(namespace)

    post = await raw_post_rate(ctx, max(p.events, 1000))
    return {
        "create_rate": create_rate,
        "baseline_cpu_cores": meter.shares,
        "apiserver_cpu_ms_per_create": meter.shares.get("kube-apiserver", 0.0) / create_rate * 1000,
        **post,
    }


async def raw_post_rate(ctx: Context, count: int, *, client_kind: str = "httpx") -> dict[str, Any]:
    """Plain POSTs of a delivery-sized body, nothing else: stock httpx, or aiohttp (kopf's HTTP stack)."""
    p = ctx.params
    body = delivery_body(ctx.pad)
    url = ctx.receiver.url("/raw")
    headers = {"content-type": "application/json"}
    closing: Callable[[], Awaitable[None]]
    if client_kind == "aiohttp":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx.receiver.ssl_context(), limit=p.concurrency), trust_env=False
        )

        async def one(_: int) -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                response.raise_for_status()

        closing = session.close
    else:
        limits = httpx.Limits(max_connections=p.concurrency, max_keepalive_connections=p.concurrency)
        client = httpx.AsyncClient(verify=ctx.receiver.ssl_context(), limits=limits, trust_env=False)

        async def one(_: int) -> None:
            response = await client.post(url, content=body, headers=headers)
            response.raise_for_status()

        closing = client.aclose
    try:
        await run_bounded(min(200, count), p.concurrency, one)
        receiver_cpu, own_cpu = cpu_seconds(ctx.receiver.pid), time.process_time()
        began = time.perf_counter()
        await run_bounded(count, p.concurrency, one)
        took = time.perf_counter() - began
    finally:
        await closing()
    return {
        "raw_post_rate": count / took,
        "raw_cpu_ms_per_post": (time.process_time() - own_cpu) / count * 1000,
        "receiver_cpu_share": (cpu_seconds(ctx.receiver.pid) - receiver_cpu) / took,
        "client_cpu_share": (time.process_time() - own_cpu) / took,
    }


# -- 1b. the pipeline baseline: an event's API work without the operator -----------------------------
def synthetic_status(webhooks: int) -> dict[str, Any]:
    """A final status with one delivery entry per webhook, built by the operator's own functions
    (used when no end-to-end run wrote a real one to copy)."""
    entries: list[dict[str, Any]] = []
    spec = parse_webhook_spec({"url": "https://127.0.0.1/w", "events": ["*"]})
    state = WebhookState(namespace="bench", name="wh", uid=str(uuid.uuid4()), generation=1, spec=spec, body={})
    for i in range(webhooks):
        entry: dict[str, Any] = {"webhook": f"wh-{i}", "id": message_id(str(uuid.uuid4()), state.uid), "attempts": 0}
        DeliveryEngine._apply(entry, AttemptResult(200, None, "", 0.004, "ok", None), state)
        entries.append(entry)
    phase = event_phase(entries)
    delivered = delivered_summary(entries)
    return {
        "phase": phase,
        "deliveries": entries,
        "delivered": delivered,
        "completionTime": format_time(time_now()),
        "observedGeneration": 1,
        "conditions": event_conditions([], phase=phase, delivered=delivered, generation=1, now=time_now()),
    }


async def pipeline(ctx: Context) -> dict[str, Any]:
    """The physical limit of the CR-mode design: a raw client does exactly an event's API work —
    create it, see it on a watch of the namespace, write one final status the size of the operator's
    (ten delivery entries), seen final on the completion watch — as fast as it can, no operator."""
    p = ctx.params
    namespace = "bench-pipeline"
    label = "pipeline"
    await ctx.api.ensure_namespace(namespace)
    await ctx.api.delete_events(namespace)
    template = ctx.status_template or synthetic_status(p.webhooks)
    path = events_path(namespace)
    writes: set[asyncio.Task[Any]] = set()
    errors = 0
    slots = asyncio.Semaphore(p.concurrency)  # the operator's writes are bounded too

    async def write(name: str) -> None:
        nonlocal errors
        async with slots:
            status, _ = await ctx.api.raw(
                "PATCH", f"{path}/{name}/status", {"status": template}, "application/merge-patch+json"
            )
        if status >= 300:
            errors += 1

    def on_object(kind: str, obj: dict[str, Any]) -> None:
        if kind == "ADDED" and not obj.get("status"):
            task = asyncio.create_task(write(obj["metadata"]["name"]))
            writes.add(task)
            task.add_done_callback(writes.discard)

    # The operator's watch: the whole namespace; the benchmark's own completion watch: by label, as in e2e.
    worker = await Watch(ctx.api, path, lambda _: False, on_object=on_object).start()
    done = await Watch(ctx.api, path, event_final, label_selector=f"bench-run={label}").start()
    meter = ctx.cpu_meter()
    try:
        meter.start()
        began, _ = await create_events(ctx, namespace, label, p.events, lambda _: EVENT)
        complete = await done.wait(p.events, within_s=max(120.0, p.events * 0.2))
        finished = max(done.done_at.values(), default=time.time())
        meter.stop()
    finally:
        await worker.stop()
        await done.stop()
        await asyncio.gather(*writes, return_exceptions=True)
    took = finished - began
    rate = len(done.done_at) / took
    await ctx.api.delete_events(namespace)
    return {
        "pipeline_rate": rate,
        "pipeline_complete": complete,
        "pipeline_write_errors": errors,
        "pipeline_status_bytes": len(json.dumps({"status": template}, separators=(",", ":"))),
        "pipeline_status_from": "e2e" if ctx.status_template else "synthetic",
        "pipeline_cpu_cores": meter.shares,
        "apiserver_cpu_ms_per_pipeline_event": meter.shares.get("kube-apiserver", 0.0) * took / p.events * 1000,
    }


# -- 4. the engine in-process --------------------------------------------------------------
async def engine(ctx: Context) -> dict[str, Any]:
    """Deliveries/s of sign + POST + record (``send`` + ``DeliveryEngine._apply``) against raw POST loops."""
    p = ctx.params
    url = ctx.receiver.url("/engine")
    spec = parse_webhook_spec({"url": url, "events": ["*"]})
    state = WebhookState(
        namespace="bench",
        name="engine",
        uid=str(uuid.uuid4()),
        generation=1,
        spec=spec,
        body={},
        ready=True,
        url=parse_url(url, allow_http=False),
        keys=(generate_signing_key(),),
        headers=(("x-team", "bench"),),
        limiter=asyncio.Semaphore(p.concurrency),
    )
    client = make_client(
        policy=DestinationPolicy.from_strings(["127.0.0.0/8"]),
        ca_bundle=str(ctx.receiver.ca_path),
        max_connections=p.concurrency,
        user_agent=USER_AGENT,
    )
    created_at = format_created_at(time_now())
    failures = 0

    async def deliver(i: int) -> None:
        nonlocal failures
        event_id = str(uuid.uuid4())
        body = build_body(
            hook_id=state.hook_id,
            event=EVENT,
            created_at=created_at,
            event_id=event_id,
            data={"t": time.time_ns() // 1000, "seq": i, "pad": ctx.pad},
        )
        entry: dict[str, Any] = {"webhook": state.name, "id": message_id(event_id, state.uid), "attempts": 0}
        result = await send(client, state, body, entry["id"], timeout_s=state.spec.retry.timeout_seconds)
        DeliveryEngine._apply(entry, result, state)
        if entry["outcome"] != "Succeeded":
            failures += 1

    raw_rates: list[float] = []
    raw_cpu: list[float] = []
    pooled_rates: list[float] = []
    pooled_cpu: list[float] = []
    engine_rates: list[float] = []
    engine_cpu: list[float] = []
    try:
        await run_bounded(min(200, p.engine_deliveries), p.concurrency, deliver)
        for _ in range(2):  # interleaved, best of two: the machine is shared
            raw = await raw_post_rate(ctx, p.engine_deliveries)
            raw_rates.append(raw["raw_post_rate"])
            raw_cpu.append(raw["raw_cpu_ms_per_post"])
            pooled = await raw_post_rate(ctx, p.engine_deliveries, client_kind="aiohttp")
            pooled_rates.append(pooled["raw_post_rate"])
            pooled_cpu.append(pooled["raw_cpu_ms_per_post"])
            began, cpu = time.perf_counter(), time.process_time()
            await run_bounded(p.engine_deliveries, p.concurrency, deliver)
            engine_rates.append(p.engine_deliveries / (time.perf_counter() - began))
            engine_cpu.append((time.process_time() - cpu) / p.engine_deliveries * 1000)
    finally:
        await client.aclose()
    return {
        "engine_rate": max(engine_rates),
        "engine_raw_rate": max(raw_rates),
        "engine_ratio": max(engine_rates) / max(raw_rates),
        "engine_raw_rate_aiohttp": max(pooled_rates),
        "engine_ratio_aiohttp": max(engine_rates) / max(pooled_rates),
        "raw_aiohttp_cpu_ms_per_post": min(pooled_cpu),
        "engine_cpu_ms_per_delivery": min(engine_cpu),
        "raw_cpu_ms_per_post": min(raw_cpu),
        "engine_failures": failures,
        "engine_rates": engine_rates,
        "engine_raw_rates": raw_rates,
    }


# -- 2. end to end and 3. paced ------------------------------------------------------------
async def setup_webhooks(ctx: Context, namespace: str, count: int, events_of: Callable[[int], list[str]]) -> float:
    """Create ``count`` Webhooks and wait until all are Ready; returns the seconds it took."""
    watch = await Watch(ctx.api, webhooks_path(namespace), webhook_ready).start()
    try:
        began = time.time()

        async def one(i: int) -> None:
            body = webhook_body(f"wh-{i}", ctx.receiver.url(f"/w/{i}"), events_of(i))
            await ctx.api.create(webhooks_path(namespace), body)

        await run_bounded(count, ctx.params.concurrency, one)
        if not await watch.wait(count, within_s=max(60.0, count * 0.5)):
            raise RuntimeError(f"only {len(watch.done_at)} of {count} webhooks Ready")
        return max(watch.done_at.values()) - began
    finally:
        await watch.stop()


def latency_figures(prefix: str, latencies: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(latencies, 50),
        f"{prefix}_p95_ms": percentile(latencies, 95),
        f"{prefix}_p99_ms": percentile(latencies, 99),
        f"{prefix}_max_ms": max(latencies, default=0.0),
    }


async def end_to_end(ctx: Context, operator: Operator, namespace: str) -> dict[str, Any]:
    """N events at full rate to ``webhooks`` subscribers: delivered events/s, latency, API and CPU cost."""
    p = ctx.params
    label = "e2e"
    watch = await Watch(ctx.api, events_path(namespace), event_final, label_selector=f"bench-run={label}").start()
    await ctx.receiver.reset(ctx.http)
    before = await ctx.api.request_counts()
    cpu_before = cpu_seconds(operator.pid)
    meter = ctx.cpu_meter(operator)
    try:
        with RssSampler(operator.pid) as rss:
            meter.start()
            began, created = await create_events(ctx, namespace, label, p.events, lambda _: EVENT)
            complete = await watch.wait(p.events, within_s=max(120.0, p.events * 0.2))
            finished = max(watch.done_at.values(), default=time.time())
            cpu_after = cpu_seconds(operator.pid)
            meter.stop()
            await asyncio.sleep(2.5)  # one health flush, which belongs to these deliveries
            after = await ctx.api.request_counts()
    finally:
        await watch.stop()
    stats = await ctx.receiver.stats(ctx.http, latencies=True)
    sample = await ctx.api.request("GET", f"{events_path(namespace)}/{label}-0")
    if sample.get("status"):
        ctx.status_template = sample["status"]
    deliveries = p.events * p.webhooks
    took = finished - began
    # The whole stack's CPU per delivery: the operator, the API server and etcd (not the generator or receiver).
    stack_cores = sum(meter.shares.get(k, 0.0) for k in ("operator", "kube-apiserver", "etcd"))
    requests, breakdown = operator_requests(request_delta(before, after))
    return {
        "e2e_complete": complete,
        "e2e_final_events": len(watch.done_at),
        "e2e_received": stats.count,
        "e2e_seconds": took,
        "e2e_create_rate_under_load": p.events / (created - began),
        "e2e_events_per_s": len(watch.done_at) / took,
        "e2e_deliveries_per_s": stats.count / took,
        **latency_figures("e2e", stats.latencies_ms),
        "api_requests_per_event": requests / p.events,
        "api_requests_breakdown": breakdown,
        "cpu_s_per_1k_deliveries": (cpu_after - cpu_before) / deliveries * 1000,
        "stack_cpu_s_per_1k_deliveries": stack_cores * took / deliveries * 1000,
        "operator_cpu_share": (cpu_after - cpu_before) / took,
        "e2e_cpu_cores": meter.shares,
        "apiserver_cpu_ms_per_event": meter.shares.get("kube-apiserver", 0.0) * took / p.events * 1000,
        "e2e_rss_mb_peak": rss.peak,
    }


async def paced(
    ctx: Context,
    operator: Operator,
    namespace: str,
    *,
    rate: float,
    seconds: float,
    event: str = PACED_EVENT,
    webhooks: int,
    prefix: str = "paced",
) -> dict[str, Any]:
    """Events at a fixed rate: latency from creation to receipt when the operator is not saturated,
    beside the API server's own share (creation to the event's first watch notification)."""
    label = prefix
    count = max(1, round(rate * seconds))
    watch = await Watch(ctx.api, events_path(namespace), event_final, label_selector=f"bench-run={label}").start()
    await ctx.receiver.reset(ctx.http)
    errors = 0
    tasks: set[asyncio.Task[Any]] = set()
    path = events_path(namespace)
    created_at: dict[str, float] = {}

    async def one(i: int) -> None:
        nonlocal errors
        body = event_body(f"{label}-{i}", event, label, i, ctx.pad)
        created_at[body["metadata"]["name"]] = body["spec"]["data"]["t"] / 1e6
        try:
            await ctx.api.create(path, body)
        except (RuntimeError, aiohttp.ClientError, TimeoutError):  # an API server past its limit times out
            errors += 1

    meter = ctx.cpu_meter(operator)
    meter.start()
    began = time.monotonic()
    try:
        for i in range(count):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        sent_for = time.monotonic() - began
        complete = await watch.wait(count - errors, within_s=120)
        meter.stop()
    finally:
        await watch.stop()
    stats = await ctx.receiver.stats(ctx.http, latencies=True)
    # When each event first showed on the watch: the API server's share of the latency.
    watch_lag = [(at - created_at[name]) * 1000 for name, at in watch.seen_at.items() if name in created_at]
    return {
        f"{prefix}_watch_p50_ms": percentile(watch_lag, 50),
        f"{prefix}_watch_p99_ms": percentile(watch_lag, 99),
        f"{prefix}_cpu_cores": meter.shares,
        f"{prefix}_events": count,
        f"{prefix}_webhooks": webhooks,
        f"{prefix}_rate_achieved": count / sent_for,
        f"{prefix}_complete": complete,
        f"{prefix}_create_errors": errors,
        f"{prefix}_received": stats.count,
        **latency_figures(prefix, stats.latencies_ms),
    }


# -- 5. memory ---------------------------------------------------------------------------
async def soak(ctx: Context, make_operator: Callable[[str], Operator], namespace: str) -> dict[str, Any]:
    """Deliveries at the highest sustainable rate, completed events expiring after 1s: RSS at each milestone.

    Each event goes to ``soak_webhooks`` webhooks, so that the deliveries, not the API server's
    per-event work, set the pace; the backlog is kept small so that it is not mistaken for a leak.
    """
    p = ctx.params
    await ctx.api.ensure_namespace(namespace)
    operator = make_operator(namespace)
    await setup_webhooks(ctx, namespace, p.soak_webhooks, lambda _: ["Soak.*"])
    await ctx.receiver.reset(ctx.http)
    per_event = p.soak_webhooks
    target = p.soak_deliveries[-1]
    events_needed = -(-target // per_event)
    window = max(4, 2000 // per_event)  # events created but not yet delivered
    rss_at: dict[str, float] = {}
    delivered = 0
    created = 0
    cpu_before = cpu_seconds(operator.pid)
    rss_start = rss_mb(operator.pid)
    began = time.time()
    path = events_path(namespace)
    stop = asyncio.Event()
    moved = asyncio.Event()

    series: list[tuple[int, float]] = []  # (deliveries, MB) every tenth of the way

    async def poll() -> None:
        nonlocal delivered
        milestones = list(p.soak_deliveries)
        step = max(1, target // 10)
        while milestones:
            delivered = (await ctx.receiver.stats(ctx.http)).count
            moved.set()
            while milestones and delivered >= milestones[0]:
                rss_at[str(milestones.pop(0))] = rss_mb(operator.pid)
            if delivered >= (len(series) + 1) * step:
                series.append((delivered, round(rss_mb(operator.pid), 1)))
            await asyncio.sleep(0.05)
        stop.set()
        moved.set()

    async def one(i: int) -> None:
        nonlocal created
        while created - delivered // per_event > window and not stop.is_set():
            moved.clear()
            await moved.wait()
        created += 1
        await ctx.api.create(path, event_body(f"soak-{i}", "Soak.Event", "soak", i, ctx.pad))

    poller = asyncio.create_task(poll())
    try:
        with RssSampler(operator.pid) as rss:
            await run_bounded(events_needed, p.concurrency, one)
            await asyncio.wait_for(stop.wait(), timeout=300)
        await poller
        took = time.time() - began
        cpu = cpu_seconds(operator.pid) - cpu_before
        await asyncio.sleep(3)  # the last events' TTL, plus a little
        events_left = await ctx.api.count(path)
    finally:
        poller.cancel()
        operator.stop()
    return {
        "soak_webhooks": per_event,
        "rss_mb_start": rss_start,
        "rss_mb_at": rss_at,
        "soak_rss_series": series,
        "soak_rss_mb_peak": rss.peak,
        "soak_deliveries": delivered,
        "soak_deliveries_per_s": delivered / took,
        "soak_events_created": created,
        "soak_events_left": events_left,
        "soak_cpu_s_per_1k_deliveries": cpu / delivered * 1000,
    }


async def scale(ctx: Context, make_operator: Callable[[str], Operator], namespace: str) -> dict[str, Any]:
    """Many webhooks, and many events waiting when the operator starts: its peak RSS and catch-up rate.

    The events are created while the operator is stopped, so the restarted operator finds all of
    them at once: the worst case for memory. It gets ``scale_drain_s`` to deliver them.
    """
    p = ctx.params
    await ctx.api.ensure_namespace(namespace)
    first = make_operator(namespace)
    with RssSampler(first.pid) as setup_rss:
        ready_s = await setup_webhooks(ctx, namespace, p.scale_webhooks, lambda i: [f"Load.W{i}"])
        await asyncio.sleep(3)  # the first health flush of every webhook
    rss_webhooks = rss_mb(first.pid)
    first.stop()

    began, created = await create_events(
        ctx, namespace, "scale", p.scale_events, lambda j: f"Load.W{j % p.scale_webhooks}"
    )
    watch = await Watch(ctx.api, events_path(namespace), event_final, label_selector="bench-run=scale").start()
    startup_before = await ctx.api.request_counts()
    launched = time.time()
    operator = make_operator(namespace)  # returns once every webhook is loaded and events are being handled
    started = time.time()
    before = await ctx.api.request_counts()
    try:
        with RssSampler(operator.pid) as rss:
            complete = await watch.wait(p.scale_events, within_s=p.scale_drain_s)
            ended = max(watch.done_at.values(), default=time.time()) if complete else time.time()
            final = len(watch.done_at)
            rss_end = rss_mb(operator.pid)
        after = await ctx.api.request_counts()
    finally:
        await watch.stop()
        operator.stop()
    requests, breakdown = operator_requests(request_delta(before, after))
    startup_requests, _ = operator_requests(request_delta(startup_before, before))
    return {
        "scale_webhooks_ready_s": ready_s,
        "scale_startup_s": started - launched,
        "scale_startup_api_requests": startup_requests,
        "scale_create_rate": p.scale_events / (created - began),
        "scale_complete": complete,
        "scale_final_events": final,
        "scale_events_per_s": final / (ended - started),
        "rss_mb_webhooks_only": max(rss_webhooks, setup_rss.peak),
        "rss_mb_peak": rss.peak,
        "rss_mb_scale_end": rss_end,
        "scale_api_requests_per_event": requests / max(final, 1),
        "scale_api_breakdown": breakdown,
    }


async def settle(pid: int, *, idle_share: float = 0.05, limit_s: float = 90.0) -> None:
    """Wait until a process has used under ``idle_share`` of a core for two seconds running."""
    began = time.monotonic()
    quiet = 0
    last = cpu_seconds(pid)
    while time.monotonic() - began < limit_s and quiet < 2:
        await asyncio.sleep(1.0)
        current = cpu_seconds(pid)
        quiet = quiet + 1 if current - last < idle_share else 0
        last = current


# -- 6. many webhooks in one pod ----------------------------------------------------------------------
SCALE_NAMESPACES_PREFIX = "bench-many-"
RESTART_SETTLE_S = 15.0  # after a restart's readiness, until kopf's own lists are through
WEBHOOKS_PER_NAMESPACE = 100


def many_namespaces(webhooks: int) -> list[str]:
    return [f"{SCALE_NAMESPACES_PREFIX}{k}" for k in range(-(-webhooks // WEBHOOKS_PER_NAMESPACE))]


async def create_many_webhooks(ctx: Context, first: int, last: int) -> None:
    """Webhooks ``first``..``last - 1``, 100 to a namespace, each subscribed to its own event type."""
    for namespace in many_namespaces(last)[first // WEBHOOKS_PER_NAMESPACE :]:
        await ctx.api.ensure_namespace(namespace)

    async def one(i: int) -> None:
        namespace = f"{SCALE_NAMESPACES_PREFIX}{(first + i) // WEBHOOKS_PER_NAMESPACE}"
        n = first + i
        await ctx.api.create(
            webhooks_path(namespace), webhook_body(f"many-{n}", ctx.receiver.url(f"/m/{n}"), [f"Many.W{n}"])
        )

    await run_bounded(last - first, ctx.params.concurrency, one)


async def not_ready(ctx: Context, path: str) -> tuple[int, set[str]]:
    """How many Webhooks there are under ``path``, and the names of those not Ready (listed page by page)."""
    total = 0
    names: set[str] = set()
    token = ""
    while True:
        page = await ctx.api.request("GET", path, limit="500", **({"continue": token} if token else {}))
        for item in page.get("items") or []:
            total += 1
            if not webhook_ready(item):
                names.add(item["metadata"]["name"])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return total, names


async def many_webhooks(
    ctx: Context, make_operator: Callable[[], Operator], size: int, *, created: int, events: int, prefix: str
) -> dict[str, Any]:
    """``size`` Webhooks in ``size / 100`` namespaces, one operator for the whole cluster.

    The webhooks beyond ``created`` are made while no operator runs; then the operator starts (the
    ``_first`` figures: it makes their Secrets and writes their status): the seconds until it is
    ready (every webhook loaded, the event watch listed) and every webhook is Ready, the API
    requests that start-up cost, and its peak RSS while events flow to webhooks all over the
    cluster. Then it restarts, as after an upgrade or a crash: the unprefixed ``_ready_s`` and
    ``_startup_api_requests`` are that restart's.
    """
    p = ctx.params
    await create_many_webhooks(ctx, created, size)
    all_webhooks = f"/apis/{API_VERSION}/webhooks"
    figures: dict[str, Any] = {f"{prefix}_webhooks": size, f"{prefix}_namespaces": len(many_namespaces(size))}

    async def start(kind: str) -> Operator:
        _, pending = await not_ready(ctx, all_webhooks)
        watch = await Watch(ctx.api, all_webhooks, webhook_ready).start()
        try:
            before = await ctx.api.request_counts()
            operator = make_operator()
            await asyncio.to_thread(operator.start, 300.0, sample_rss=True)
            ready_at = await operator.wait_ready(120.0)
            if ready_at is None:
                raise RuntimeError(f"{prefix}: operator not ready within 120s")
            deadline = time.monotonic() + 120
            for _ in range(10_000):  # checks the watch's record, no request
                if pending <= watch.done_at.keys() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            all_ready_at = max((watch.done_at.get(name, time.time()) for name in pending), default=ready_at)
            requests, breakdown = operator_requests(request_delta(before, await ctx.api.request_counts()))
        finally:
            await watch.stop()
        figures[f"{prefix}{kind}_ready_s"] = max(ready_at, all_ready_at) - operator.launched_at
        figures[f"{prefix}{kind}_operator_ready_s"] = ready_at - operator.launched_at
        figures[f"{prefix}{kind}_webhooks_not_ready"] = len(pending - watch.done_at.keys())
        figures[f"{prefix}{kind}_startup_api_requests"] = requests
        figures[f"{prefix}{kind}_startup_api_breakdown"] = breakdown
        figures[f"{prefix}{kind}_rss_mb_loaded"] = rss_mb(operator.pid)
        if kind == "":
            # kopf lists the Webhooks and Secrets for its own watches after readiness: the restart's
            # peak is read once that is through, with the requests it made.
            await asyncio.sleep(RESTART_SETTLE_S)
            assert operator.rss is not None
            figures[f"{prefix}_restart_rss_mb_peak"] = operator.rss.peak
            figures[f"{prefix}_restart_rss_mb_settled"] = rss_mb(operator.pid)
            settled, _ = operator_requests(request_delta(before, await ctx.api.request_counts()))
            figures[f"{prefix}_restart_api_requests_settled"] = settled
        return operator

    operator = await start("_first")
    try:
        # Events flowing to webhooks all over the cluster, each to one of them.
        label = f"{prefix}-events"
        namespaces = many_namespaces(size)
        watch = await Watch(
            ctx.api, f"/apis/{API_VERSION}/webhookevents", event_final, label_selector=f"bench-run={label}"
        ).start()
        try:

            async def one(j: int) -> None:
                n = (j * 7919) % size  # spread over every namespace
                namespace = namespaces[n // WEBHOOKS_PER_NAMESPACE]
                await ctx.api.create(
                    events_path(namespace), event_body(f"{label}-{j}", f"Many.W{n}", label, j, ctx.pad)
                )

            began = time.time()
            await run_bounded(events, p.concurrency, one)
            complete = await watch.wait(events, within_s=max(60.0, events * 0.05))
            took = max(watch.done_at.values(), default=time.time()) - began
        finally:
            await watch.stop()
        assert operator.rss is not None
        figures[f"{prefix}_rss_mb_peak"] = operator.rss.peak
        figures[f"{prefix}_rss_mb_end"] = rss_mb(operator.pid)
        figures[f"{prefix}_events_complete"] = complete
        figures[f"{prefix}_events_per_s"] = len(watch.done_at) / took
    finally:
        operator.stop()
    operator = await start("")  # a restart: every Webhook and its Secret exist, as after an upgrade or a crash
    operator.stop()
    return figures


async def clear_many(ctx: Context, size: int) -> None:
    """Remove what an earlier run left in the many-webhooks namespaces (the namespaces stay), ten at a time."""
    namespaces = many_namespaces(size)

    async def one(i: int) -> None:
        status, _ = await ctx.api.raw("GET", f"/api/v1/namespaces/{namespaces[i]}")
        if status == 200:
            await ctx.api.clear_namespace(namespaces[i])

    await run_bounded(len(namespaces), 10, one)
