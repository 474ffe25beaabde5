"""Operator flags turned into one frozen settings object."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field

from webhook_operator.bus.config import BusSettings, connection_from_args
from webhook_operator.leader import default_namespace
from webhook_operator.policy import DestinationPolicy

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``24h``, ``1h30m``, ``90s``, ``500ms``); a bare number is seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 24h, 30m, 90s or 0")
    return total


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    # Retention defaults from KEP-95's scale targets; the README's "Retention" section derives them.
    event_ttl_s: float = 15 * 60.0
    failed_event_ttl_s: float = 24 * 3600.0
    max_completed_events: int = 1000
    key_rotation_overlap_s: float = 24 * 3600.0
    allow_http: bool = False
    destination_policy: DestinationPolicy = field(default_factory=DestinationPolicy)
    ca_bundle: str | None = None
    max_concurrency: int = 100
    per_webhook_concurrency: int = 10
    health_flush_s: float = 2.0
    log_format: str = "text"
    log_level: str = "INFO"
    leader_election: bool = True
    leader_election_namespace: str = "default"
    leader_election_id: str = "webhook-operator"
    shutdown_grace_s: float = 20.0
    ingress_port: int = 0  # 0: no event ingress
    ingress_tls_cert: str | None = None
    ingress_tls_key: str | None = None
    ingress_max_body_bytes: int = 64 * 1024
    event_bus: BusSettings | None = None  # bus mode (--event-bus)
    auto_disable_after_s: float = 120 * 3600.0  # Svix's 5 days; 0: never


_DNS_SUBDOMAIN_RE = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DEV_CIDRS = ("127.0.0.0/8", "::1/128")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="port of /metrics (default 8080)")
    parser.add_argument("--health-port", type=int, default=8081, help="port of /healthz and /readyz (default 8081)")
    parser.add_argument("--bind-address", default="0.0.0.0", help="address the metrics and health servers bind")
    parser.add_argument(
        "--event-ttl",
        type=parse_duration,
        default="15m",
        help="delete Delivered and NoSubscribers WebhookEvents this long after completion (0 keeps them)",
    )
    parser.add_argument(
        "--failed-event-ttl",
        type=parse_duration,
        default="24h",
        help="delete Failed and PartiallyFailed WebhookEvents this long after completion (0 keeps them)",
    )
    parser.add_argument(
        "--max-completed-events",
        type=int,
        default=1000,
        help="completed WebhookEvents kept per namespace, the oldest deleted first (0: no cap)",
    )
    parser.add_argument(
        "--key-rotation-overlap", type=parse_duration, default="24h", help="how long a rotated-out key keeps signing"
    )
    parser.add_argument("--allow-http", action="store_true", help="accept http:// webhook URLs")
    parser.add_argument(
        "--allow-cidr",
        action="append",
        default=[],
        help="let deliveries reach this otherwise blocked range (repeatable)",
    )
    parser.add_argument("--ca-bundle", default=None, help="extra CA certificates (PEM) trusted for deliveries")
    parser.add_argument("--max-concurrency", type=int, default=100, help="deliveries in flight at once, in all")
    parser.add_argument(
        "--per-webhook-concurrency", type=int, default=10, help="deliveries in flight at once to one webhook"
    )
    parser.add_argument("--health-flush-interval", type=parse_duration, default="2s", help=argparse.SUPPRESS)
    parser.add_argument(
        "--dev", action="store_true", help="= --allow-http --allow-cidr 127.0.0.0/8 --allow-cidr ::1/128"
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run as a candidate for a coordination.k8s.io Lease; only the holder delivers and writes (default on)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the Lease (default: the pod's namespace, else 'default')",
    )
    parser.add_argument(
        "--leader-election-id", default="webhook-operator", help="name of the Lease (default webhook-operator)"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=parse_duration,
        default="20s",
        help="on SIGTERM, how long in-flight attempts get to finish and be recorded before the Lease is "
        "released (default 20s; keep it below the pod's terminationGracePeriodSeconds)",
    )
    parser.add_argument(
        "--ingress-port", type=int, default=0, help="serve the HTTPS event ingress on this port (default: off)"
    )
    parser.add_argument("--ingress-tls-cert", default=None, help="the ingress's certificate (PEM), re-read on change")
    parser.add_argument("--ingress-tls-key", default=None, help="the ingress's private key (PEM), re-read on change")
    parser.add_argument(
        "--ingress-max-body-bytes", type=int, default=64 * 1024, help="larger requests get 413 (default 65536)"
    )
    bus = parser.add_argument_group("event bus (NATS JetStream)")
    bus.add_argument(
        "--event-bus",
        action="append",
        default=[],
        metavar="nats://HOST:PORT",
        help="take events from NATS JetStream (repeatable: servers of one cluster); replicas all deliver",
    )
    bus.add_argument("--event-bus-creds", default=None, metavar="FILE", help="NATS credentials file (JWT + NKey)")
    bus.add_argument("--event-bus-nkey", default=None, metavar="FILE", help="NKey seed file")
    bus.add_argument("--event-bus-user", default=None, help="NATS user name")
    bus.add_argument(
        "--event-bus-password-file",
        default=None,
        metavar="FILE",
        help="the user's password (else $WEBHOOK_OPERATOR_EVENT_BUS_PASSWORD)",
    )
    bus.add_argument(
        "--event-bus-token-file",
        default=None,
        metavar="FILE",
        help="NATS token (else $WEBHOOK_OPERATOR_EVENT_BUS_TOKEN)",
    )
    bus.add_argument("--event-bus-tls-ca", default=None, metavar="FILE", help="CA certificates (PEM) for NATS TLS")
    bus.add_argument("--event-bus-tls-cert", default=None, metavar="FILE", help="client certificate (PEM)")
    bus.add_argument("--event-bus-tls-key", default=None, metavar="FILE", help="client key (PEM)")
    bus.add_argument(
        "--event-bus-dedupe-window",
        type=parse_duration,
        default="15m",
        help="a Nats-Msg-Id seen again within this is one event (default 15m)",
    )
    bus.add_argument(
        "--event-bus-log-max-age", type=parse_duration, default="24h", help="request log kept this long (default 24h)"
    )
    bus.add_argument(
        "--event-bus-log-max-bytes", type=int, default=1024**3, help="request log size in all (default 1 GiB)"
    )
    bus.add_argument(
        "--event-bus-log-max-per-webhook",
        type=int,
        default=10_000,
        help="request-log records kept per webhook, oldest dropped first (default 10000)",
    )
    bus.add_argument("--event-bus-ack-wait", type=parse_duration, default="30s", help=argparse.SUPPRESS)
    bus.add_argument(
        "--event-bus-stream-replicas", type=int, default=1, help="JetStream replicas of each stream (default 1)"
    )
    parser.add_argument(
        "--auto-disable-after",
        type=parse_duration,
        default="120h",
        help="suspend a webhook whose every attempt has failed for this long (default 120h; 0 never); "
        "a Webhook's spec.autoDisable.afterFailingFor overrides it",
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from_args(args: argparse.Namespace) -> Settings:
    cidrs = list(args.allow_cidr)
    if args.dev:
        cidrs += [c for c in DEV_CIDRS if c not in cidrs]
    if args.max_completed_events < 0:
        raise SystemExit("error: --max-completed-events must be 0 (no cap) or more")
    if args.max_concurrency < 1 or args.per_webhook_concurrency < 1:
        raise SystemExit("error: --max-concurrency and --per-webhook-concurrency must be at least 1")
    if not _DNS_SUBDOMAIN_RE.fullmatch(args.leader_election_id or ""):
        raise SystemExit(
            f"error: --leader-election-id {args.leader_election_id!r}: must be a DNS subdomain name "
            "(lower-case letters, digits, '-' and '.'; at most 253 characters)"
        )
    namespace = args.leader_election_namespace or default_namespace()
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise SystemExit(f"error: --leader-election-namespace {namespace!r}: not a valid namespace name")
    try:
        policy = DestinationPolicy.from_strings(cidrs)
    except ValueError as exc:
        raise SystemExit(f"error: --allow-cidr: {exc}") from exc
    if args.ingress_port and not args.dev and not (args.ingress_tls_cert and args.ingress_tls_key):
        raise SystemExit(
            "error: --ingress-port needs --ingress-tls-cert and --ingress-tls-key"
            " (or --dev for a self-signed certificate)"
        )
    if bool(args.ingress_tls_cert) != bool(args.ingress_tls_key):
        raise SystemExit("error: give both --ingress-tls-cert and --ingress-tls-key, or neither")
    if args.ingress_max_body_bytes < 1:
        raise SystemExit("error: --ingress-max-body-bytes must be at least 1")
    event_bus = None
    if args.event_bus:
        if bool(args.event_bus_tls_cert) != bool(args.event_bus_tls_key):
            raise SystemExit("error: give both --event-bus-tls-cert and --event-bus-tls-key, or neither")
        bad = [s for s in args.event_bus if not re.fullmatch(r"(nats|tls)://[^\s/]+", s)]
        if bad:
            raise SystemExit(f"error: --event-bus {bad[0]!r}: use nats://HOST:PORT or tls://HOST:PORT")
        if not 1 <= args.event_bus_stream_replicas <= 5:
            raise SystemExit("error: --event-bus-stream-replicas must be 1 to 5")
        event_bus = dataclasses.replace(
            connection_from_args(args, tuple(dict.fromkeys(args.event_bus))),
            dedupe_window_s=float(args.event_bus_dedupe_window),
            log_max_age_s=float(args.event_bus_log_max_age),
            log_max_bytes=args.event_bus_log_max_bytes,
            log_max_per_webhook=args.event_bus_log_max_per_webhook,
            replicas=args.event_bus_stream_replicas,
            ack_wait_s=max(1.0, float(args.event_bus_ack_wait)),
        )
    return Settings(
        namespaces=tuple(dict.fromkeys(args.namespace)),
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        event_ttl_s=float(args.event_ttl),
        failed_event_ttl_s=float(args.failed_event_ttl),
        max_completed_events=args.max_completed_events,
        key_rotation_overlap_s=float(args.key_rotation_overlap),
        allow_http=bool(args.allow_http or args.dev),
        destination_policy=policy,
        ca_bundle=args.ca_bundle,
        max_concurrency=args.max_concurrency,
        per_webhook_concurrency=args.per_webhook_concurrency,
        health_flush_s=float(args.health_flush_interval),
        log_format=args.log_format,
        log_level=args.log_level,
        leader_election=bool(args.leader_election),
        leader_election_namespace=namespace,
        leader_election_id=args.leader_election_id,
        shutdown_grace_s=float(args.shutdown_grace),
        ingress_port=args.ingress_port,
        ingress_tls_cert=args.ingress_tls_cert,
        ingress_tls_key=args.ingress_tls_key,
        ingress_max_body_bytes=args.ingress_max_body_bytes,
        event_bus=event_bus,
        auto_disable_after_s=float(args.auto_disable_after),
    )
