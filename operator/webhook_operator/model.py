"""Typed, defaulted views of Webhook and WebhookEvent objects as the API returns them."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook_operator.delivery.ratelimit import RateLimit, default_burst
from webhook_operator.retry import RetryPolicy
from webhook_operator.settings import parse_duration

TEST_ANNOTATION = "webhook-operator.io/test-requested-at"
ROTATE_ANNOTATION = "webhook-operator.io/rotate-key-requested-at"
REDELIVER_ANNOTATION = "webhook-operator.io/redeliver-requested-at"
RESUME_ANNOTATION = "webhook-operator.io/resume-requested-at"
# "<requestedAt> <webhook> all|failed": redeliver this event to that one webhook (kubectl webhooks replay).
REPLAY_ANNOTATION = "webhook-operator.io/replay-requested-at"
ORDERED = "Ordered"
CA_KEY = "ca.crt"
MANAGED_BY_LABEL = ("app.kubernetes.io/managed-by", "webhook-operator")
SIGNING_KEY = "signingKey"
STANDARD_SECRET_KEY = "standardWebhooksSecret"
PREVIOUS_KEY = "previousSigningKey"
PREVIOUS_KEY_EXPIRES_ANNOTATION = "webhook-operator.io/previous-key-expires-at"

FINAL_OUTCOMES = frozenset({"Succeeded", "Failed"})
FINAL_PHASES = frozenset({"Delivered", "PartiallyFailed", "Failed", "NoSubscribers"})


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class Header:
    name: str
    value: str | None = None
    secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class TLSRefs:
    """``spec.tls``: a CA Secret key trusted for this webhook, a kubernetes.io/tls Secret for mTLS."""

    ca: SecretKeyRef | None = None
    client_cert: str | None = None


@dataclass(frozen=True)
class WebhookSpec:
    url: str
    events: tuple[str, ...]
    enabled: bool = True
    description: str = ""
    headers: tuple[Header, ...] = ()
    signing_key_ref: SecretKeyRef | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    filter: str = ""
    tls: TLSRefs | None = None
    auto_disable_after_s: float | None = None  # None: the --auto-disable-after default; 0: never
    rate_limit: RateLimit | None = None
    ordered: bool = False  # spec.ordering == Ordered


def _ref(raw: Any, default_key: str) -> SecretKeyRef | None:
    if not isinstance(raw, Mapping) or not raw.get("name"):
        return None
    return SecretKeyRef(name=str(raw["name"]), key=str(raw.get("key") or default_key))


def parse_retry(raw: Any) -> RetryPolicy:
    base = RetryPolicy()
    raw = raw if isinstance(raw, Mapping) else {}
    return RetryPolicy(
        max_retries=int(raw.get("maxRetries", base.max_retries)),
        backoff_seconds=float(raw.get("backoffSeconds", base.backoff_seconds)),
        max_backoff_seconds=float(raw.get("maxBackoffSeconds", base.max_backoff_seconds)),
        timeout_seconds=float(raw.get("timeoutSeconds", base.timeout_seconds)),
    )


def parse_webhook_spec(spec: Mapping[str, Any]) -> WebhookSpec:
    """The schema already validated and defaulted ``spec``; this only types it."""
    headers = []
    for item in spec.get("headers") or ():
        secret = _ref((item.get("valueFrom") or {}).get("secretKeyRef"), "")
        headers.append(Header(name=str(item["name"]), value=item.get("value"), secret=secret))
    return WebhookSpec(
        url=str(spec.get("url", "")),
        events=tuple(str(e) for e in spec.get("events") or ()),
        enabled=bool(spec.get("enabled", True)),
        description=str(spec.get("description") or ""),
        headers=tuple(headers),
        signing_key_ref=_ref(spec.get("signingKeySecretRef"), SIGNING_KEY),
        retry=parse_retry(spec.get("retry")),
        filter=str(spec.get("filter") or ""),
        tls=parse_tls(spec.get("tls")),
        auto_disable_after_s=parse_auto_disable(spec.get("autoDisable")),
        rate_limit=parse_rate_limit(spec.get("rateLimit")),
        ordered=spec.get("ordering") == ORDERED,
    )


def parse_rate_limit(raw: Any) -> RateLimit | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        rate = float(raw.get("requestsPerSecond") or 0)
        burst = int(raw.get("burst") or default_burst(rate)) if rate > 0 else 0
    except (TypeError, ValueError):
        return None
    if rate <= 0 or burst < 1:  # admission rejects these; a value from before the rule means no limit
        return None
    return RateLimit(requests_per_second=rate, burst=burst)


def parse_tls(raw: Any) -> TLSRefs | None:
    if not isinstance(raw, Mapping):
        return None
    client = raw.get("clientCertSecretRef")
    refs = TLSRefs(
        ca=_ref(raw.get("caSecretRef"), CA_KEY),
        client_cert=str(client["name"]) if isinstance(client, Mapping) and client.get("name") else None,
    )
    return refs if refs.ca or refs.client_cert else None


def parse_auto_disable(raw: Any) -> float | None:
    value = raw.get("afterFailingFor") if isinstance(raw, Mapping) else None
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_duration(value)
    except argparse.ArgumentTypeError:  # admission accepts only durations; a value from before the rule is ignored
        return None


def signing_secret_name(webhook_name: str) -> str:
    return f"{webhook_name}-signing-key"


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def format_time(value: dt.datetime) -> str:
    """RFC 3339 with second precision, as Kubernetes writes times."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_STAMP: list[Any] = [0, ""]  # (unix second, format_time of it)


def now_stamp() -> str:
    """``format_time(now())``, formatted once per second: every attempt records one."""
    second = int(time.time())
    if _STAMP[0] != second:
        _STAMP[:] = [second, format_time(dt.datetime.fromtimestamp(second, dt.UTC))]
    return str(_STAMP[1])


def format_time_ms(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def slim_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without what the operator never reads but would keep per webhook in memory:
    ``managedFields`` and kubectl's copy of the last applied manifest."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED_ANNOTATION in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED_ANNOTATION}
    return {**body, "metadata": meta}
