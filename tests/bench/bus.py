"""Bus-mode phases of `make bench`: the same receiver and webhooks, events published to NATS JetStream.

Figures (keys of bench-results.json): the raw JetStream publish rate (the baseline), end-to-end
events/s and deliveries/s with 1 and 3 replicas, latency at a paced rate, operator + NATS CPU per
1,000 deliveries, API requests per event, and ratios to the engine's own rate and to CR mode.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

from tests.bench.harness import Operator, cpu_seconds
from tests.bench.phases import EVENT, PACED_EVENT, Context, latency_figures, operator_requests, request_delta
from tests.support.nats import NatsServer

PUBLISH_CONCURRENCY = 256


def event_payload(event: str, seq: int, pad: str) -> bytes:
    """The bus form of the benchmark's event: data carries its publication time in unix microseconds."""
    return json.dumps({"event": event, "data": {"t": time.time_ns() // 1000, "seq": seq, "pad": pad}}).encode()


async def publish_all(url: str, subject: str, count: int, payload_of: Callable[[int], bytes]) -> float:
    """Publish ``count`` messages with JetStream acks, ``PUBLISH_CONCURRENCY`` in flight; returns seconds."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30)
    slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)

    async def one(i: int) -> None:
        async with slots:
            await js.publish(subject, payload_of(i))

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    took = time.monotonic() - began
    await nc.close()
    return took


async def raw_publish_rate(url: str, count: int, pad: str) -> dict[str, Any]:
    """Baseline: JetStream publishes (file storage, acked) to a stream nobody consumes."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCH_RAW", subjects=["bench.raw"])
    await nc.close()
    took = await publish_all(url, "bench.raw", count, lambda i: event_payload(EVENT, i, pad))
    nc = await nats.connect(url)
    await nc.jetstream().delete_stream("BENCH_RAW")
    await nc.close()
    return {"bus_raw_publish_per_s": count / took}


async def wait_received(ctx: Context, count: int, within_s: float) -> tuple[int, float]:
    """Poll the receiver until ``count`` requests arrived (or time is up); (count, time of the last)."""
    deadline = time.monotonic() + within_s
    while True:
        stats = await ctx.receiver.stats(ctx.http)
        if stats.count >= count or time.monotonic() > deadline:
            return stats.count, stats.last
        await asyncio.sleep(0.2)


async def end_to_end(
    ctx: Context, operators: list[Operator], nats_pid: int, url: str, namespace: str, prefix: str
) -> dict[str, Any]:
    p = ctx.params
    deliveries = p.events * p.webhooks
    await ctx.receiver.reset(ctx.http)
    before = await ctx.api.request_counts()
    pids = [op.pid for op in operators] + [nats_pid]
    cpu_before = [cpu_seconds(pid) for pid in pids]
    meter = ctx.cpu_meter()
    meter.pids.update({f"operator-{i}": op.pid for i, op in enumerate(operators)} | {"nats-server": nats_pid})
    meter.start()
    began = time.time()
    await publish_all(url, f"webhook-operator.events.{namespace}", p.events, lambda i: event_payload(EVENT, i, ctx.pad))
    received, last = await wait_received(ctx, deliveries, max(120.0, deliveries / 200))
    meter.stop()
    cpu_after = [cpu_seconds(pid) for pid in pids]
    await asyncio.sleep(2.5)  # the health flush that belongs to these deliveries
    after = await ctx.api.request_counts()
    took = last - began
    requests, breakdown = operator_requests(request_delta(before, after))
    used = sum(cpu_after) - sum(cpu_before)
    return {
        f"{prefix}_received": received,
        f"{prefix}_complete": received >= deliveries,
        f"{prefix}_seconds": took,
        f"{prefix}_events_per_s": p.events * received / deliveries / took,
        f"{prefix}_deliveries_per_s": received / took,
        f"{prefix}_cpu_s_per_1k_deliveries": used / max(received, 1) * 1000,
        f"{prefix}_operator_cpu_s_per_1k_deliveries": (used - (cpu_after[-1] - cpu_before[-1]))
        / max(received, 1)
        * 1000,
        f"{prefix}_api_requests_per_event": requests / p.events,
        f"{prefix}_api_requests_breakdown": breakdown,
        f"{prefix}_cpu_cores": meter.shares,
    }


async def paced(ctx: Context, url: str, namespace: str, rate: float, seconds: float) -> dict[str, Any]:
    """Events published at ``rate``/s to ``paced_webhooks`` subscribers: publication-to-receipt latency."""
    count = max(1, round(rate * seconds))
    await ctx.receiver.reset(ctx.http)
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30)
    tasks: set[asyncio.Task[Any]] = set()
    began = time.monotonic()
    for i in range(count):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(
            js.publish(f"webhook-operator.events.{namespace}", event_payload(PACED_EVENT, i, ctx.pad))
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    achieved = count / (time.monotonic() - began)
    await nc.close()
    expected = count * ctx.params.paced_webhooks
    await wait_received(ctx, expected, 60.0)
    stats = await ctx.receiver.stats(ctx.http, latencies=True)
    figures = latency_figures("bus_paced", stats.latencies_ms)
    return {**figures, "bus_paced_rate_achieved": achieved, "bus_paced_received": stats.count}


def start_nats(workdir: Path) -> NatsServer:
    workdir.mkdir(parents=True, exist_ok=True)
    return NatsServer(workdir / "jetstream", workdir / "nats-server.log").start()
