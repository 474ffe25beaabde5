"""`kubectl webhooks`: test, logs, rotate-key, redeliver, replay and resume for people at a terminal."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from webhook_operator import GROUP, VERSION
from webhook_operator.bus.config import BusSettings, connection_from_args
from webhook_operator.delivery.redelivery import replay_value
from webhook_operator.model import (
    REDELIVER_ANNOTATION,
    REPLAY_ANNOTATION,
    RESUME_ANNOTATION,
    ROTATE_ANNOTATION,
    TEST_ANNOTATION,
    parse_time,
)
from webhook_operator.settings import parse_duration


class PluginError(Exception):
    """A problem to print as one line, with exit code 1."""


def _api() -> tuple[Any, str]:
    try:
        kubernetes.config.load_kube_config()
        _, context = kubernetes.config.list_kube_config_contexts()
        namespace = (context or {}).get("context", {}).get("namespace") or "default"
    except kubernetes.config.ConfigException:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException as exc:
            raise PluginError(f"no Kubernetes configuration found: {exc}") from exc
        namespace = "default"
    return kubernetes.client.CustomObjectsApi(), namespace


def _explain(exc: ApiException, kind: str, name: str | None, namespace: str) -> PluginError:
    if exc.status == 404:
        body = str(exc.body or "")
        if name and "the server could not find the requested resource" not in body:
            return PluginError(f'{kind} "{name}" not found in namespace "{namespace}"')
        return PluginError(
            f"the {kind} resource type is not installed in this cluster; install the CRDs: kubectl apply -f crds/"
        )
    if exc.status == 403:
        return PluginError(f"not allowed: {exc.reason} ({kind} in namespace {namespace})")
    return PluginError(f"API error {exc.status}: {exc.reason}")


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _annotate(api: Any, plural: str, kind: str, namespace: str, name: str, annotation: str) -> str:
    value = _stamp()
    try:
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, {"metadata": {"annotations": {annotation: value}}}
        )
    except ApiException as exc:
        raise _explain(exc, kind, name, namespace) from exc
    return value


def _wait_for(
    api: Any, plural: str, namespace: str, name: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        if done(obj):
            return dict(obj)
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {timeout:g}s; is the operator running? (kubectl get pods -A)")
        time.sleep(0.5)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def cmd_test(api: Any, args: argparse.Namespace) -> int:
    value = _annotate(api, "webhooks", "Webhook", args.namespace, args.name, TEST_ANNOTATION)
    if not args.wait:
        print(f"test payloads requested for webhook {args.namespace}/{args.name} ({value})")
        return 0
    obj = _wait_for(
        api,
        "webhooks",
        args.namespace,
        args.name,
        lambda o: (o.get("status") or {}).get("lastTest", {}).get("requestedAt") == value,
        args.timeout,
    )
    results = obj["status"]["lastTest"].get("results") or []
    print(
        table(
            ["EVENT", "STATUS", "DURATION", "ERROR"],
            [
                [r.get("event"), r.get("statusCode", "-"), f"{r.get('durationMs', 0)}ms", r.get("error", "")]
                for r in results
            ],
        )
    )
    ok = all(200 <= int(r.get("statusCode") or 0) < 300 for r in results)
    return 0 if ok else 1


def log_rows(events: Sequence[dict[str, Any]], webhook: str, since: dt.datetime, failed_only: bool) -> list[list[Any]]:
    """The request log of one webhook: one row per delivery entry, newest first."""
    rows: list[tuple[dt.datetime, list[Any]]] = []
    for event in events:
        meta, status = event.get("metadata") or {}, event.get("status") or {}
        created = parse_time(meta.get("creationTimestamp"))
        for entry in status.get("deliveries") or ():
            if entry.get("webhook") != webhook:
                continue
            when = parse_time(entry.get("lastAttemptTime")) or created
            if when is None or when < since:
                continue
            if failed_only and entry.get("outcome") != "Failed":
                continue
            rows.append(
                (
                    when,
                    [
                        when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        (event.get("spec") or {}).get("event"),
                        meta.get("name"),
                        entry.get("outcome"),
                        entry.get("attempts", 0),
                        entry.get("statusCode", "-"),
                        f"{entry.get('durationMs', 0)}ms",
                        # spec.rateLimit: how long the last attempt waited for a token
                        f"{entry['rateLimitedMs'] / 1000:.1f}s" if entry.get("rateLimitedMs") else "-",
                        entry.get("error", ""),
                    ],
                )
            )
    rows.sort(key=lambda r: r[0], reverse=True)
    return [r for _, r in rows]


BUS_ENV = "WEBHOOK_OPERATOR_EVENT_BUS"


def bus_settings(args: argparse.Namespace) -> BusSettings | None:
    """Bus mode when --event-bus (or $WEBHOOK_OPERATOR_EVENT_BUS, comma-separated) names NATS servers."""
    servers = list(args.event_bus) or [s for s in os.environ.get(BUS_ENV, "").split(",") if s.strip()]
    if not servers:
        return None
    return connection_from_args(args, tuple(s.strip() for s in servers))


def _on_bus(what: str, call: Any) -> Any:
    try:
        return asyncio.run(call)
    except Exception as exc:  # connection refused, authorization, no stream: one line, not a traceback
        raise PluginError(f"{what} on the event bus failed: {exc.__class__.__name__}: {exc}") from exc


def cmd_logs(api: Any, args: argparse.Namespace) -> int:
    bus = bus_settings(args)
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, args.namespace, "webhooks", args.name)
        events = (
            []
            if bus
            else api.list_namespaced_custom_object(GROUP, VERSION, args.namespace, "webhookevents").get("items", [])
        )
    except ApiException as exc:
        raise _explain(exc, "Webhook", args.name, args.namespace) from exc
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(args.since))
    if bus is not None:
        from webhook_operator.bus import requestlog

        records = _on_bus("reading the request log", requestlog.read_log(bus, args.namespace, args.name, since))
        rows = requestlog.log_rows(records, since, args.failed)
        headers = ["TIME", "EVENT", "EVENTID", "OUTCOME", "ATTEMPTS", "STATUS", "DURATION", "ERROR"]
    else:
        rows = log_rows(events, args.name, since, args.failed)
        headers = ["TIME", "EVENT", "WEBHOOKEVENT", "OUTCOME", "ATTEMPTS", "STATUS", "DURATION", "WAITED", "ERROR"]
    if not rows:
        kind = "failed requests" if args.failed else "requests"
        print(f"no {kind} for webhook {args.namespace}/{args.name} in the last {args.since}")
        return 0
    print(table(headers, rows))
    return 0


def redeliver_on_bus(bus: BusSettings, args: argparse.Namespace) -> int:
    """Bus mode: EVENT is the eventId; its failed deliveries (from the request log) are published again."""
    from webhook_operator.bus import requestlog

    started = dt.datetime.now(dt.UTC)
    since = started - dt.timedelta(hours=24)
    records = _on_bus("reading the request log", requestlog.read_log(bus, args.namespace, None, since))
    deliveries = requestlog.to_redeliver(records, args.event)
    if not deliveries:
        raise PluginError(f'no failed delivery of event "{args.event}" in namespace "{args.namespace}" in the last 24h')
    value = _stamp()
    _on_bus("publishing the redelivery", requestlog.republish(bus, deliveries, value))
    names = ", ".join(sorted(d.webhook for d in deliveries))
    if not args.wait:
        print(f"redelivery of event {args.event} requested for {names} ({value})")
        return 0
    deadline = time.monotonic() + args.timeout
    ids = [d.id for d in deliveries]
    while True:
        records = _on_bus("reading the request log", requestlog.read_log(bus, args.namespace, None, started))
        outcomes = requestlog.finished(records, ids, value)
        if outcomes is not None:
            break
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {args.timeout:g}s; is the operator running? (kubectl get pods -A)")
        time.sleep(0.5)
    ok = sum(1 for o in outcomes.values() if o == "Succeeded")
    print(f"redelivered to {names}: {ok}/{len(outcomes)} succeeded")
    return 0 if ok == len(outcomes) else 1


def cmd_rotate(api: Any, args: argparse.Namespace) -> int:
    value = _annotate(api, "webhooks", "Webhook", args.namespace, args.name, ROTATE_ANNOTATION)
    if not args.wait:
        print(f"key rotation requested for webhook {args.namespace}/{args.name} ({value})")
        return 0
    obj = _wait_for(
        api,
        "webhooks",
        args.namespace,
        args.name,
        lambda o: (o.get("status") or {}).get("keyRotation", {}).get("requestedAt") == value,
        args.timeout,
    )
    rotation = obj["status"]["keyRotation"]
    if "rotatedAt" not in rotation or rotation.get("requestedAt") != value:
        raise PluginError(f"key not rotated: {rotation.get('message', 'see kubectl describe webhook')}")
    print(f"rotated at {rotation['rotatedAt']}; previous key valid until {rotation.get('previousKeyExpiresAt', '-')}")
    return 0


def cmd_redeliver(api: Any, args: argparse.Namespace) -> int:
    bus = bus_settings(args)
    if bus is not None:
        return redeliver_on_bus(bus, args)
    value = _annotate(api, "webhookevents", "WebhookEvent", args.namespace, args.event, REDELIVER_ANNOTATION)
    if not args.wait:
        print(f"redelivery requested for webhookevent {args.namespace}/{args.event} ({value})")
        return 0
    obj = _wait_for(
        api,
        "webhookevents",
        args.namespace,
        args.event,
        lambda o: (
            (o.get("status") or {}).get("redelivery", {}).get("requestedAt") == value
            and (o.get("status") or {}).get("completionTime") is not None
        ),
        args.timeout,
    )
    status = obj["status"]
    print(f"phase {status.get('phase')}, delivered {status.get('delivered')}")
    return 0 if status.get("phase") in ("Delivered", "NoSubscribers") else 1


def replay_targets(
    events: Sequence[dict[str, Any]], webhook: str, since: dt.datetime, failed_only: bool
) -> tuple[list[str], int]:
    """The events of the window (by creationTimestamp) whose delivery to ``webhook`` is final (Failed
    only with ``failed_only``), oldest first, and how many of the window's were skipped as still in flight."""
    chosen: list[tuple[dt.datetime, str]] = []
    in_flight = 0
    for event in events:
        meta = event.get("metadata") or {}
        created = parse_time(meta.get("creationTimestamp"))
        if created is None or created < since:
            continue
        for entry in (event.get("status") or {}).get("deliveries") or ():
            if entry.get("webhook") != webhook:
                continue
            outcome = entry.get("outcome")
            if outcome not in ("Succeeded", "Failed"):
                in_flight += 1
            elif outcome == "Failed" or not failed_only:
                chosen.append((created, str(meta.get("name"))))
    chosen.sort()
    return [name for _, name in chosen], in_flight


def replay_progress(events: Sequence[dict[str, Any]], webhook: str, value: str, names: set[str]) -> dict[str, int]:
    """How the replay ``value`` of ``names`` stands: delivered, failed, pending (gone: deleted meanwhile)."""
    counts = {"delivered": 0, "failed": 0, "pending": 0}
    seen = set()
    for event in events:
        name = (event.get("metadata") or {}).get("name")
        if name not in names:
            continue
        seen.add(name)
        status = event.get("status") or {}
        entry: dict[str, Any] = next((d for d in status.get("deliveries") or () if d.get("webhook") == webhook), {})
        if (status.get("replay") or {}).get("requestedAt") != value:
            counts["pending"] += 1
        elif entry.get("outcome") == "Succeeded":
            counts["delivered"] += 1
        elif entry.get("outcome") == "Failed":
            counts["failed"] += 1
        else:
            counts["pending"] += 1
    counts["gone"] = len(names - seen)
    return counts


def _list_events(api: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = api.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "webhookevents", limit=500, **({"_continue": token} if token else {})
        )
        items.extend(page.get("items", []))
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items


def replay_on_bus(bus: BusSettings, args: argparse.Namespace) -> int:
    """Bus mode: the webhook's final deliveries of the window (from the request log) are published again,
    with the same webhook-ids, and followed in the log."""
    from webhook_operator.bus import requestlog

    started = dt.datetime.now(dt.UTC)
    since = started - dt.timedelta(seconds=parse_duration(args.since))
    records = _on_bus("reading the request log", requestlog.read_log(bus, args.namespace, args.name, since))
    deliveries, in_flight = requestlog.to_replay(records, since, args.failed_only)
    kind = "failed deliveries" if args.failed_only else "deliveries"
    skipped = f" ({in_flight} still in flight, not replayed)" if in_flight else ""
    print(f"found {len(deliveries)} {kind} to webhook {args.namespace}/{args.name} in the last {args.since}{skipped}")
    value = _stamp()
    if deliveries:
        _on_bus("publishing the replay", requestlog.republish(bus, deliveries, value))
    print(f"requested {len(deliveries)} ({value})")
    if not args.wait or not deliveries:
        return 0
    deadline = time.monotonic() + args.timeout
    ids = [d.id for d in deliveries]
    last = None
    while True:
        records = _on_bus("reading the request log", requestlog.read_log(bus, args.namespace, args.name, started))
        counts = requestlog.progress(records, ids, value)
        line = f"delivered {counts['delivered']}, failed {counts['failed']}, pending {counts['pending']}"
        if line != last:
            print(line, flush=True)
            last = line
        if counts["pending"] == 0:
            return 0 if counts["failed"] == 0 else 1
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {args.timeout:g}s with {counts['pending']} pending")
        time.sleep(1.0)


def cmd_replay(api: Any, args: argparse.Namespace) -> int:
    bus = bus_settings(args)
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, args.namespace, "webhooks", args.name)
        if bus is not None:
            return replay_on_bus(bus, args)
        events = _list_events(api, args.namespace)
    except ApiException as exc:
        raise _explain(exc, "Webhook", args.name, args.namespace) from exc
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(args.since))
    names, in_flight = replay_targets(events, args.name, since, args.failed_only)
    kind = "failed deliveries" if args.failed_only else "deliveries"
    skipped = f" ({in_flight} still in flight, not replayed)" if in_flight else ""
    print(f"found {len(names)} {kind} to webhook {args.namespace}/{args.name} in the last {args.since}{skipped}")
    value = replay_value(_stamp(), args.name, failed_only=args.failed_only)
    requested: set[str] = set()
    for name in names:
        try:
            api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                args.namespace,
                "webhookevents",
                name,
                {"metadata": {"annotations": {REPLAY_ANNOTATION: value}}},
            )
        except ApiException as exc:
            if exc.status == 404:  # deleted (TTL) since the list
                continue
            raise _explain(exc, "WebhookEvent", name, args.namespace) from exc
        requested.add(name)
    print(f"requested {len(requested)} ({value})")
    if not args.wait or not requested:
        return 0
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        counts = replay_progress(_list_events(api, args.namespace), args.name, value, requested)
        line = f"delivered {counts['delivered']}, failed {counts['failed']}, pending {counts['pending']}"
        if counts["gone"]:
            line += f", deleted meanwhile {counts['gone']}"
        if line != last:
            print(line, flush=True)
            last = line
        if counts["pending"] == 0:
            return 0 if counts["failed"] == 0 else 1
        if time.monotonic() > deadline:
            raise PluginError(f"timed out after {args.timeout:g}s with {counts['pending']} pending")
        time.sleep(1.0)


def cmd_resume(api: Any, args: argparse.Namespace) -> int:
    try:
        current = api.get_namespaced_custom_object(GROUP, VERSION, args.namespace, "webhooks", args.name)
    except ApiException as exc:
        raise _explain(exc, "Webhook", args.name, args.namespace) from exc
    suspended = bool(((current.get("status") or {}).get("autoDisable") or {}).get("disabledAt"))
    value = _annotate(api, "webhooks", "Webhook", args.namespace, args.name, RESUME_ANNOTATION)
    if not suspended:
        print(f"webhook {args.namespace}/{args.name} is not auto-disabled; nothing to resume")
        return 0
    if not args.wait:
        print(f"resume requested for webhook {args.namespace}/{args.name} ({value})")
        return 0
    _wait_for(
        api,
        "webhooks",
        args.namespace,
        args.name,
        lambda o: not ((o.get("status") or {}).get("autoDisable") or {}).get("disabledAt"),
        args.timeout,
    )
    print(f"webhook {args.namespace}/{args.name} resumed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl webhooks", description="Work with webhook-operator Webhooks.")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: the context's)")
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="send a test payload for each subscribed event")
    test.add_argument("name")
    test.add_argument("--wait", action="store_true", help="wait for and print the results")
    logs = sub.add_parser("logs", help="the webhook's recent requests, newest first")
    logs.add_argument("name")
    logs.add_argument("--since", default="24h", help="how far back (default 24h)")
    logs.add_argument("--failed", action="store_true", help="only failed deliveries")
    rotate = sub.add_parser("rotate-key", help="generate a new signing key (the old one keeps signing for the overlap)")
    rotate.add_argument("name")
    rotate.add_argument("--wait", action="store_true")
    redeliver = sub.add_parser("redeliver", help="deliver an event again to every webhook whose delivery failed")
    redeliver.add_argument("event", help="the WebhookEvent's name; in bus mode, the eventId")
    redeliver.add_argument("--wait", action="store_true")
    replay = sub.add_parser(
        "replay", help="deliver the webhook's recorded events of a window again, with the same webhook-ids"
    )
    replay.add_argument("name")
    replay.add_argument("--since", required=True, help="events created in this window, e.g. 2h, 30m")
    replay.add_argument("--failed-only", action="store_true", help="only deliveries that failed")
    replay.add_argument("--wait", action="store_true", help="wait and report delivered/failed/pending")
    resume = sub.add_parser("resume", help="deliver again to a webhook the operator auto-disabled")
    resume.add_argument("name")
    resume.add_argument("--wait", action="store_true", help="wait until the operator has resumed it")
    for p in (logs, redeliver, replay):
        bus = p.add_argument_group("bus mode (the request log is read from NATS directly)")
        bus.add_argument(
            "--event-bus",
            action="append",
            default=[],
            metavar="nats://HOST:PORT",
            help=f"NATS server (repeatable; default ${BUS_ENV}, comma-separated)",
        )
        bus.add_argument("--event-bus-creds", default=None, metavar="FILE")
        bus.add_argument("--event-bus-nkey", default=None, metavar="FILE")
        bus.add_argument("--event-bus-user", default=None)
        bus.add_argument(
            "--event-bus-password-file", default=None, metavar="FILE", help="else $WEBHOOK_OPERATOR_EVENT_BUS_PASSWORD"
        )
        bus.add_argument(
            "--event-bus-token-file", default=None, metavar="FILE", help="else $WEBHOOK_OPERATOR_EVENT_BUS_TOKEN"
        )
        bus.add_argument("--event-bus-tls-ca", default=None, metavar="FILE")
        bus.add_argument("--event-bus-tls-cert", default=None, metavar="FILE")
        bus.add_argument("--event-bus-tls-key", default=None, metavar="FILE")
    for p in (test, logs, rotate, redeliver, replay, resume):
        p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="namespace (default: the context's)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "test": cmd_test,
        "logs": cmd_logs,
        "rotate-key": cmd_rotate,
        "redeliver": cmd_redeliver,
        "replay": cmd_replay,
        "resume": cmd_resume,
    }
    try:
        api, default_namespace = _api()
        args.namespace = args.namespace or default_namespace
        return commands[args.command](api, args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(f"error: API error {exc.status}: {exc.reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
