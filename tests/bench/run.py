"""`make bench`: the operator against a dedicated local control plane and a fast HTTPS receiver.

Prints a table with the target beside each figure and writes ``bench-results.json``. Not part of
``make test``; ``--quick`` is a short smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from devcluster.controlplane import ControlPlane
from tests.bench import bus, phases
from tests.bench.harness import Api, Operator, credentials_for, machine_info
from tests.bench.receiver import ReceiverProcess
from webhook_operator.cli import loop_factory

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "bench"
SOAK_MILESTONES = (10_000, 50_000, 100_000)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 3 minutes)")
    parser.add_argument("--events", type=int, help="events in the end-to-end run (default 2000)")
    parser.add_argument("--webhooks", type=int, default=10, help="webhooks every event goes to (default 10)")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent creates and POSTs (default 20)")
    parser.add_argument("--payload-bytes", type=int, default=256, help="padding in each event's data (default 256)")
    parser.add_argument("--paced-rate", type=float, default=50.0, help="events/s in the paced run (default 50)")
    parser.add_argument("--paced-seconds", type=float, help="length of the paced run (default 60)")
    parser.add_argument("--paced-webhooks", type=int, default=1, help="webhooks each paced event goes to (default 1)")
    parser.add_argument(
        "--paced200-seconds", type=float, help="length of the paced run at 200 events/s x all webhooks (default 30)"
    )
    parser.add_argument("--engine-deliveries", type=int, help="deliveries per engine round (default 2000)")
    parser.add_argument("--scale-webhooks", type=int, help="webhooks in the memory run (default 1000)")
    parser.add_argument("--scale-events", type=int, help="events in the memory run (default 10000)")
    parser.add_argument(
        "--scale-drain-s", type=float, help="longest wait for the memory run's events to complete (default 60)"
    )
    parser.add_argument(
        "--soak-deliveries",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="deliveries at which RSS is read, comma-separated (default 10000,50000,100000)",
    )
    parser.add_argument(
        "--many",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="webhooks in the many-webhooks runs, 100 to a namespace, comma-separated (default 1000,10000)",
    )
    parser.add_argument("--many-events", type=int, help="events sent during each many-webhooks run (default 1000)")
    parser.add_argument("--soak-webhooks", type=int, default=25, help="webhooks each soak event goes to (default 25)")
    parser.add_argument(
        "--only", default="", help="comma-separated phases: baseline,engine,e2e,paced,pipeline,bus,soak,scale,many"
    )
    parser.add_argument("--bus-paced-rate", type=float, default=500.0, help="events/s in the bus paced run (500)")
    parser.add_argument(
        "--profile", action="store_true", help="run the operators of e2e+paced and many under pyinstrument"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results.json")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".cluster-bench")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the control plane running afterwards")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (300 if quick else 2000)
    args.paced_seconds = args.paced_seconds or (10.0 if quick else 60.0)
    args.paced200_seconds = args.paced200_seconds or (5.0 if quick else 30.0)
    args.many = args.many or ((200, 1000) if quick else (1000, 10_000))
    args.many_events = args.many_events or (300 if quick else 1000)
    args.engine_deliveries = args.engine_deliveries or (1000 if quick else 2000)
    args.scale_webhooks = args.scale_webhooks or (100 if quick else 1000)
    args.scale_events = args.scale_events or (1000 if quick else 10_000)
    args.scale_drain_s = args.scale_drain_s or (30.0 if quick else 60.0)
    args.soak_deliveries = args.soak_deliveries or ((2000, 5000, 10_000) if quick else SOAK_MILESTONES)
    return args


TARGETS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "e2e_pipeline_ratio": (">= 0.9", lambda v: v >= 0.9),
    "engine_ratio": (">= 0.8", lambda v: v >= 0.8),
    "engine_ratio_aiohttp": (">= 0.9", lambda v: v >= 0.9),
    "cpu_s_per_1k_deliveries": ("<= 0.25 s", lambda v: v <= 0.25),
    "stack_cpu_s_per_1k_deliveries": ("<= 0.7 s", lambda v: v <= 0.7),
    "apiserver_cost_per_event_vs_create": ("<= 2.5", lambda v: v <= 2.5),
    "paced200_p99_ms": ("<= 10 ms", lambda v: v <= 10),
    "scale1k_rss_mb_peak": ("<= 100 MB", lambda v: v <= 100),
    "scale10k_rss_mb_peak": ("<= 300 MB", lambda v: v <= 300),
    "scale1k_restart_rss_mb_peak": ("<= 100 MB", lambda v: v <= 100),
    "scale10k_restart_rss_mb_peak": ("<= 300 MB", lambda v: v <= 300),
    "scale1k_ready_s": ("<= 30 s", lambda v: v <= 30),
    "scale10k_ready_s": ("<= 30 s", lambda v: v <= 30),
    "e2e_p50_ms": ("<= 50 ms", lambda v: v <= 50),
    "paced_p50_ms": ("<= 50 ms", lambda v: v <= 50),
    "paced_p99_ms": ("<= 250 ms", lambda v: v <= 250),
    "api_requests_per_event": ("<= 2", lambda v: v <= 2),
    "rss_mb_peak": ("<= 150 MB", lambda v: v <= 150),
    "bus_deliveries_per_s": (">= 4,800/s (2x Svix)", lambda v: v >= 4800),
    "bus_engine_ratio": (">= 0.8", lambda v: v >= 0.8),
    "bus_vs_cr_ratio": (">= 2.5", lambda v: v >= 2.5),
    "bus_cpu_s_per_1k_deliveries": ("<= 0.35 s", lambda v: v <= 0.35),
    "bus_api_requests_per_event": ("~0 (coalesced health)", lambda v: v <= 0.05),
}

ROWS: list[tuple[str, str, str]] = [
    ("create_rate", "raw WebhookEvent creates (no operator)", "/s"),
    ("apiserver_cpu_ms_per_create", "API server CPU per raw create", "ms"),
    ("raw_post_rate", "raw httpx POSTs to the receiver", "/s"),
    ("receiver_cpu_share", "receiver CPU during raw POSTs", "cores"),
    ("e2e_events_per_s", "end to end: events delivered and recorded", "/s"),
    ("e2e_deliveries_per_s", "end to end: deliveries", "/s"),
    ("e2e_ratio", "end to end / raw create rate", ""),
    ("pipeline_rate", "pipeline: create, watch, one status write (no operator)", "/s"),
    ("apiserver_cpu_ms_per_pipeline_event", "API server CPU per pipeline event", "ms"),
    ("e2e_pipeline_ratio", "end to end / pipeline rate", ""),
    ("apiserver_cpu_ms_per_event", "API server CPU per end-to-end event", "ms"),
    ("apiserver_cost_per_event_vs_create", "  the same, in raw creates", "x"),
    ("e2e_p50_ms", "end to end latency p50", "ms"),
    ("e2e_p95_ms", "end to end latency p95", "ms"),
    ("e2e_p99_ms", "end to end latency p99", "ms"),
    ("paced_rate_achieved", "paced: events created", "/s"),
    ("paced_p50_ms", "paced latency p50", "ms"),
    ("paced_p95_ms", "paced latency p95", "ms"),
    ("paced_p99_ms", "paced latency p99", "ms"),
    ("paced_watch_p50_ms", "paced: creation to watch event p50 (API part)", "ms"),
    ("paced_watch_p99_ms", "paced: creation to watch event p99 (API part)", "ms"),
    ("paced200_rate_achieved", "paced 200/s x all webhooks: events created", "/s"),
    ("paced200_p50_ms", "paced 200/s latency p50", "ms"),
    ("paced200_p99_ms", "paced 200/s latency p99", "ms"),
    ("paced200_watch_p50_ms", "paced 200/s: creation to watch event p50", "ms"),
    ("paced200_watch_p99_ms", "paced 200/s: creation to watch event p99", "ms"),
    ("engine_rate", "engine in-process (sign, POST, record)", "/s"),
    ("engine_raw_rate", "raw httpx loop, same concurrency", "/s"),
    ("engine_ratio", "engine / raw httpx", ""),
    ("engine_raw_rate_aiohttp", "raw aiohttp loop (a general async client)", "/s"),
    ("engine_ratio_aiohttp", "engine / raw aiohttp", ""),
    ("engine_cpu_ms_per_delivery", "engine CPU per delivery", "ms"),
    ("raw_cpu_ms_per_post", "raw httpx CPU per POST", "ms"),
    ("raw_aiohttp_cpu_ms_per_post", "raw aiohttp CPU per POST", "ms"),
    ("api_requests_per_event", "API requests per event (no watches)", ""),
    ("cpu_s_per_1k_deliveries", "operator CPU per 1,000 deliveries", "s"),
    ("stack_cpu_s_per_1k_deliveries", "operator + API server + etcd CPU per 1,000", "s"),
    ("operator_cpu_share", "operator CPU during end to end", "cores"),
    ("bus_raw_publish_per_s", "bus: raw JetStream publishes (acked, file)", "/s"),
    ("bus_events_per_s", "bus, 1 replica: events delivered", "/s"),
    ("bus_deliveries_per_s", "bus, 1 replica: deliveries", "/s"),
    ("bus_vs_raw_publish", "bus events / raw publish rate", ""),
    ("bus_3replicas_deliveries_per_s", "bus, 3 replicas: deliveries", "/s"),
    ("bus_paced_rate_achieved", "bus paced: events published", "/s"),
    ("bus_paced_p50_ms", "bus paced latency p50", "ms"),
    ("bus_paced_p99_ms", "bus paced latency p99", "ms"),
    ("bus_engine_ratio", "bus deliveries / engine rate", ""),
    ("bus_vs_cr_ratio", "bus deliveries / CR-mode deliveries", ""),
    ("bus_api_requests_per_event", "bus: API requests per event", ""),
    ("bus_cpu_s_per_1k_deliveries", "bus: operator + NATS CPU per 1,000 deliveries", "s"),
    ("bus_operator_cpu_s_per_1k_deliveries", "  of which the operator", "s"),
    ("soak_deliveries_per_s", "soak: deliveries (events expiring)", "/s"),
    ("soak_events_left", "soak: events left 3s after the last (TTL 1s)", ""),
    ("rss_mb_start", "RSS before the soak", "MB"),
    ("scale_webhooks_ready_s", "memory run: all webhooks Ready after", "s"),
    ("scale_startup_s", "memory run: restart until events are handled", "s"),
    ("scale_create_rate", "memory run: events created, operator stopped", "/s"),
    ("scale_events_per_s", "memory run: backlog delivered after start (1 each)", "/s"),
    ("scale_api_requests_per_event", "memory run: API requests per event", ""),
    ("rss_mb_webhooks_only", "RSS with the webhooks only", "MB"),
    ("rss_mb_peak", "peak RSS, starting onto all those events", "MB"),
    ("rss_mb_scale_end", "RSS at the end of the memory run", "MB"),
]
for _size, _name in ((1000, "1k"), (10_000, "10k")):
    ROWS += [
        (f"scale{_name}_first_ready_s", f"{_size:,} webhooks, first start: all Ready", "s"),
        (f"scale{_name}_first_startup_api_requests", f"{_size:,} webhooks, first start: API requests", ""),
        (f"scale{_name}_rss_mb_peak", f"{_size:,} webhooks: peak RSS, events flowing", "MB"),
        (f"scale{_name}_ready_s", f"{_size:,} webhooks, restart: all loaded, ready", "s"),
        (f"scale{_name}_startup_api_requests", f"{_size:,} webhooks, restart: API requests", ""),
        (f"scale{_name}_rss_mb_loaded", f"{_size:,} webhooks, restart: RSS once loaded", "MB"),
        (f"scale{_name}_restart_rss_mb_peak", f"{_size:,} webhooks, restart: peak RSS until settled", "MB"),
        (f"scale{_name}_restart_rss_mb_settled", f"{_size:,} webhooks, restart: RSS settled", "MB"),
        (f"scale{_name}_restart_api_requests_settled", f"{_size:,} webhooks, restart: API requests until settled", ""),
    ]


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'figure':<46} {'value':>12}  {'unit':<6} target")
    print("-" * 84)
    for key, label, unit in ROWS:
        if key not in results:
            continue
        target = ""
        if key in TARGETS:
            text, ok = TARGETS[key]
            target = f"{text}  {'ok' if ok(float(results[key])) else 'MISSED'}"
        print(f"{label:<46} {fmt(results[key]):>12}  {unit:<6} {target}")
    for deliveries, mb in (results.get("rss_mb_at") or {}).items():
        print(f"{'RSS at ' + format(int(deliveries), ',') + ' deliveries':<46} {fmt(mb):>12}  {'MB':<6} flat")
    if "e2e_cpu_cores" in results:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in results["e2e_cpu_cores"].items())
        print(f"  CPU during end to end, in cores: {shares}")
    if "paced_cpu_cores" in results:
        shares = ", ".join(f"{k} {v:.2f}" for k, v in results["paced_cpu_cores"].items())
        print(f"  CPU during the paced run, in cores: {shares}")
    if "scale_webhooks" in results:
        print(f"  (memory run: {results['scale_webhooks']} webhooks, {results['scale_events']} events)")
    for note in results.get("notes", []):
        print(f"  note: {note}")
    print()


def describe(results: dict[str, Any], params: phases.Params) -> list[str]:
    """What a reader needs to read the figures right."""
    notes = []
    if "paced_p50_ms" in results:
        notes.append(f"paced events go to {params.paced_webhooks} webhook(s); end-to-end events to {params.webhooks}")
    if "soak_deliveries" in results:
        notes.append(f"soak events go to {params.soak_webhooks} webhooks each and expire 1s after completion")
    others = (results.get("e2e_cpu_cores") or {}).get("others")
    if others is not None and others > 0.2:
        notes.append(f"other processes on this machine used {others:.2f} cores during the end-to-end run")
    return notes


def install_crds(kubeconfig: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    crds = ROOT / "crds"
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(crds)], env=env, check=True, capture_output=True)
    names = [f"crd/{p.name.removesuffix('.yaml')}" for p in sorted(crds.glob("*.yaml"))]
    subprocess.run(
        ["kubectl", "wait", "--for=condition=Established", "--timeout=60s", *names],
        env=env,
        check=True,
        capture_output=True,
    )


async def run(args: argparse.Namespace, plane: ControlPlane, workdir: Path) -> dict[str, Any]:
    only = {x for x in args.only.split(",") if x}

    def wanted(name: str) -> bool:
        return not only or name in only

    params = phases.Params(
        concurrency=args.concurrency,
        events=args.events,
        webhooks=args.webhooks,
        payload_bytes=args.payload_bytes,
        paced_rate=args.paced_rate,
        paced_seconds=args.paced_seconds,
        paced_webhooks=min(args.paced_webhooks, args.webhooks),
        engine_deliveries=args.engine_deliveries,
        scale_webhooks=args.scale_webhooks,
        scale_events=args.scale_events,
        scale_drain_s=args.scale_drain_s,
        many_sizes=args.many,
        many_events=args.many_events,
        soak_deliveries=args.soak_deliveries,
        soak_webhooks=args.soak_webhooks,
        workdir=workdir,
        kubeconfig=plane.kubeconfig,
        profile=args.profile,
    )
    api = Api(credentials_for(plane.kubeconfig), args.concurrency)
    receiver = ReceiverProcess(workdir).start()
    http = httpx.AsyncClient(verify=receiver.ssl_context(), trust_env=False)
    state = json.loads((plane.state_dir / "state.json").read_text())
    ctx = phases.Context(params, api, receiver, http, {k: int(v) for k, v in state["pids"].items()})
    results: dict[str, Any] = {"machine": machine_info(await api.version()), "notes": []}
    results["params"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(params).items()}
    results["quick"] = args.quick
    operators: list[Operator] = []

    def operator(
        namespace: str | None,
        *extra: str,
        profile: Path | None = None,
        ready_line: str = "delivering",
        start: bool = True,
    ) -> Operator:
        op = Operator(
            plane.kubeconfig,
            [
                *(("--namespace", namespace) if namespace else ()),
                "--allow-cidr",
                "127.0.0.0/8",
                "--ca-bundle",
                str(receiver.ca_path),
                *extra,
            ],
            workdir / f"operator-{len(operators)}.log",
            profile_path=profile,
            ready_line=ready_line,
        )
        operators.append(op)
        return op.start() if start else op

    def step(name: str) -> None:
        print(f"[bench] {time.strftime('%H:%M:%S')} {name}", file=sys.stderr, flush=True)

    async def e2e_and_paced() -> dict[str, Any]:
        figures: dict[str, Any] = {}
        profile = workdir / "profile-e2e.txt" if args.profile else None
        op = operator(NAMESPACE, "--event-ttl", "0", "--max-completed-events", "0", profile=profile)
        try:
            figures["webhooks_ready_s"] = await phases.setup_webhooks(
                ctx, NAMESPACE, args.webhooks, lambda i: phases.bench_subscriptions(i, params.paced_webhooks)
            )
            if wanted("e2e"):
                step(f"end to end: {args.events} events x {args.webhooks} webhooks")
                figures.update(await phases.end_to_end(ctx, op, NAMESPACE))
                if "create_rate" in results:
                    figures["e2e_ratio"] = figures["e2e_events_per_s"] / results["create_rate"]
                if results.get("apiserver_cpu_ms_per_create"):
                    # What an end-to-end event costs the API server (its creation, one status write,
                    # watch traffic) against a bare create: the e2e ratio cannot pass its inverse
                    # on a machine the API server shares with the generator and the operator.
                    figures["apiserver_cost_per_event_vs_create"] = (
                        figures["apiserver_cpu_ms_per_event"] / results["apiserver_cpu_ms_per_create"]
                    )
            if wanted("paced"):
                subscribers = f"{params.paced_webhooks} webhook(s)"
                step(f"paced: {args.paced_rate:g} events/s x {subscribers} for {args.paced_seconds:g}s")
                figures.update(
                    await phases.paced(
                        ctx,
                        op,
                        NAMESPACE,
                        rate=params.paced_rate,
                        seconds=params.paced_seconds,
                        webhooks=params.paced_webhooks,
                    )
                )
                step(f"paced: 200 events/s x {args.webhooks} webhooks for {args.paced200_seconds:g}s")
                try:
                    figures.update(
                        await phases.paced(
                            ctx,
                            op,
                            NAMESPACE,
                            rate=200.0,
                            seconds=args.paced200_seconds,
                            event=phases.EVENT,
                            webhooks=args.webhooks,
                            prefix="paced200",
                        )
                    )
                except Exception as exc:  # past the API server's limit: keep the other figures of the phase
                    results.setdefault("errors", {})["paced200"] = f"{type(exc).__name__}: {exc}"
        finally:
            op.stop()
        if profile:
            figures["profile"] = str(profile)
        return figures

    async def scale() -> dict[str, Any]:
        figures = {"scale_webhooks": args.scale_webhooks, "scale_events": args.scale_events}
        keep = ("--event-ttl", "0", "--max-completed-events", "0")
        figures.update(await phases.scale(ctx, lambda ns: operator(ns, *keep), "bench-scale"))
        return figures

    async def pipeline() -> dict[str, Any]:
        figures = await phases.pipeline(ctx)
        if results.get("e2e_events_per_s"):
            figures["e2e_pipeline_ratio"] = results["e2e_events_per_s"] / figures["pipeline_rate"]
        return figures

    async def many() -> dict[str, Any]:
        # One operator for the whole cluster: nothing else may be waiting in the other namespaces.
        for namespace in (NAMESPACE, "bench-baseline", "bench-bus", "bench-soak", "bench-pipeline"):
            await api.delete_events(namespace)
        await api.clear_namespace("bench-scale")
        keep = ("--event-ttl", "0", "--max-completed-events", "0")
        figures: dict[str, Any] = {}
        created = 0
        for size in sorted(params.many_sizes):
            name = f"{size // 1000}k" if size % 1000 == 0 else str(size)
            step(f"{size} webhooks in {len(phases.many_namespaces(size))} namespaces, one operator")
            figures.update(
                await phases.many_webhooks(
                    ctx,
                    lambda: operator(
                        None,
                        *keep,
                        start=False,
                        profile=workdir / f"profile-many-{len(operators)}.txt" if args.profile else None,
                    ),
                    size,
                    created=created,
                    events=params.many_events,
                    prefix=f"scale{name}",
                )
            )
            created = size
        return figures

    async def bus_mode() -> dict[str, Any]:
        namespace = "bench-bus"
        server = bus.start_nats(workdir / "nats")
        started: list[Operator] = []
        try:
            figures = await bus.raw_publish_rate(server.url, args.events, ctx.pad)
            assert server.proc is not None
            nats_pid = server.proc.pid
            flags = ("--event-bus", server.url, "--leader-election-namespace", namespace, "--event-ttl", "0")
            started.append(operator(namespace, *flags, profile=workdir / "profile-bus.txt" if args.profile else None))
            figures["bus_webhooks_ready_s"] = await phases.setup_webhooks(
                ctx, namespace, args.webhooks, lambda i: phases.bench_subscriptions(i, params.paced_webhooks)
            )
            step(f"bus, 1 replica: {args.events} events x {args.webhooks} webhooks")
            figures.update(await bus.end_to_end(ctx, started, nats_pid, server.url, namespace, "bus"))
            step(f"bus paced: {args.bus_paced_rate:g} events/s for {args.paced_seconds:g}s")
            figures.update(await bus.paced(ctx, server.url, namespace, args.bus_paced_rate, args.paced_seconds))
            started += [operator(namespace, *flags, ready_line="bus: consuming") for _ in range(2)]
            step(f"bus, 3 replicas: {args.events} events x {args.webhooks} webhooks")
            figures.update(await bus.end_to_end(ctx, started, nats_pid, server.url, namespace, "bus_3replicas"))
        finally:
            for op in started:
                op.stop()
            server.stop()
        figures["bus_vs_raw_publish"] = figures["bus_events_per_s"] / figures["bus_raw_publish_per_s"]
        if results.get("engine_rate"):
            figures["bus_engine_ratio"] = figures["bus_deliveries_per_s"] / results["engine_rate"]
        if results.get("e2e_deliveries_per_s"):
            figures["bus_vs_cr_ratio"] = figures["bus_deliveries_per_s"] / results["e2e_deliveries_per_s"]
        return figures

    plan: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("baseline", "baseline: raw creates and raw POSTs", lambda: phases.baseline(ctx)),
        ("engine", "engine in-process", lambda: phases.engine(ctx)),
        ("e2e", f"end to end and paced: {args.webhooks} webhooks", e2e_and_paced),
        ("pipeline", "pipeline baseline: create, watch, one status write", pipeline),
        ("bus", f"bus mode: NATS JetStream, {args.webhooks} webhooks", bus_mode),
        (
            "soak",
            f"soak: {args.soak_deliveries[-1]} deliveries to {args.soak_webhooks} webhooks per event",
            lambda: phases.soak(ctx, lambda ns: operator(ns, "--event-ttl", "1s"), "bench-soak"),
        ),
        ("scale", f"memory: {args.scale_webhooks} webhooks, {args.scale_events} events", scale),
        ("many", f"many webhooks: {', '.join(map(str, args.many))}, 100 to a namespace", many),
    ]
    try:
        for namespace in (NAMESPACE, "bench-baseline", "bench-bus", "bench-soak", "bench-scale", "bench-pipeline"):
            await api.ensure_namespace(namespace)
            await api.clear_namespace(namespace)
        if wanted("many"):
            await phases.clear_many(ctx, max(args.many))
        for name, title, work in plan:
            if not (wanted(name) or (name == "e2e" and wanted("paced"))):
                continue
            step(title)
            try:
                results.update(await work())
            except Exception as exc:  # one failed phase must not lose the other phases' figures
                results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
                print(f"[bench] {name} failed: {exc!r}", file=sys.stderr, flush=True)
        if wanted("soak") and args.soak_deliveries[-1] < SOAK_MILESTONES[-1]:
            results["notes"].append(
                f"RSS read up to {args.soak_deliveries[-1]:,} deliveries, not 100,000 (shortened run)"
            )
        results["notes"].extend(describe(results, params))
    finally:
        for op in operators:
            op.stop()
        await http.aclose()
        await api.close()
        receiver.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="webhook-operator-bench-"))
    plane = ControlPlane(args.state_dir.resolve())
    started = time.monotonic()
    plane.up()
    try:
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        install_crds(plane.kubeconfig)
        # The operator's event loop (uvloop), so the in-process engine rate is the operator's own.
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            results = runner.run(run(args, plane, workdir))
    finally:
        if not args.keep_cluster:
            plane.down(quiet=True)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["workdir"] = str(workdir)
    args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print_table(results)
    print(f"results: {args.output}   operator logs: {workdir}   took {results['total_seconds']:.0f}s")
    for name, error in (results.get("errors") or {}).items():
        print(f"FAILED {name}: {error}", file=sys.stderr)
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
