"""The Prometheus registry and the functions that update it.

Labels carry namespace, webhook name, event name, outcome and status class only: never a
URL, a header value or a key.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from webhook_operator.health import HealthSummary

PREFIX = "webhook_operator_"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Key = tuple[str, str]


@dataclass(frozen=True)
class WebhookGauges:
    pending: Any
    in_flight: Any
    ordered_blocked: Any


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliveries = Counter(
            PREFIX + "deliveries",
            "Deliveries by final outcome; a delivery and its retries count once.",
            ["namespace", "webhook", "event", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            PREFIX + "delivery_attempts",
            "Delivery attempts by status class.",
            ["namespace", "webhook", "code"],
            registry=r,
        )
        self.duration = Histogram(
            PREFIX + "delivery_duration_seconds",
            "Duration of one delivery attempt.",
            ["namespace", "webhook"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.success_ratio = Gauge(
            PREFIX + "webhook_success_ratio",
            "Share of deliveries that succeeded in the last 24h (absent with none).",
            ["namespace", "webhook"],
            registry=r,
        )
        self.requests_24h = Gauge(
            PREFIX + "webhook_requests_24h", "Deliveries in the last 24h.", ["namespace", "webhook"], registry=r
        )
        self.enabled = Gauge(
            PREFIX + "webhook_enabled", "1 if the webhook is enabled.", ["namespace", "webhook"], registry=r
        )
        self.ready = Gauge(PREFIX + "webhook_ready", "1 if the webhook is Ready.", ["namespace", "webhook"], registry=r)
        self.in_flight = Gauge(
            PREFIX + "deliveries_in_flight", "Delivery attempts under way.", ["namespace", "webhook"], registry=r
        )
        self.pending = Gauge(
            PREFIX + "deliveries_pending",
            "Deliveries waiting for a first attempt or a retry.",
            ["namespace", "webhook"],
            registry=r,
        )
        self.leader = Gauge(PREFIX + "leader", "1 while this replica holds the Lease and delivers, else 0.", registry=r)
        self.ingress_requests = Counter(
            PREFIX + "ingress_requests",
            "Requests to the event ingress by HTTP status code.",
            ["code"],
            registry=r,
        )
        self.ingress_reviews = Counter(
            PREFIX + "ingress_reviews",
            "TokenReviews (review=token) and SubjectAccessReviews (review=access) the ingress asked the API server"
            " for; answers reused from its cache are not counted.",
            ["review"],
            registry=r,
        )
        self.bus_terminated = Counter(
            PREFIX + "bus_messages_terminated",
            "Bus messages terminated as undeliverable (reason: subject, json, event, delivery).",
            ["reason"],
            registry=r,
        )
        self.filtered = Counter(
            PREFIX + "events_filtered",
            "Events a webhook subscribes to that its spec.filter kept from it (result=false), or could not"
            " judge (result=error: a runtime error, counted as not matching).",
            ["namespace", "webhook", "result"],
            registry=r,
        )
        self.filter_errors = Counter(
            PREFIX + "filter_errors",
            "spec.filter evaluations that failed at run time (a missing field, a wrong type, the cost limit);"
            " the event is not sent to that webhook.",
            ["namespace", "webhook"],
            registry=r,
        )
        self.auto_disabled = Counter(
            PREFIX + "webhook_auto_disabled",
            "Times a webhook was suspended, by reason (Gone: a 410 answer; FailingTooLong: every attempt failed"
            " for spec.autoDisable.afterFailingFor).",
            ["namespace", "webhook", "reason"],
            registry=r,
        )
        self.suspended = Gauge(
            PREFIX + "webhook_suspended",
            "1 while the webhook is auto-disabled (kubectl webhooks resume NAME).",
            ["namespace", "webhook"],
            registry=r,
        )
        self.rate_limit_wait = Counter(
            PREFIX + "rate_limit_wait_seconds",
            "Time attempts spent waiting for a token of the webhook's spec.rateLimit (holding no slot).",
            ["namespace", "webhook"],
            registry=r,
        )
        self.rate_limited_attempts = Counter(
            PREFIX + "rate_limited_attempts",
            "Attempts that waited for a token of the webhook's spec.rateLimit.",
            ["namespace", "webhook"],
            registry=r,
        )
        self.ordered_blocked = Gauge(
            PREFIX + "ordered_blocked",
            "Deliveries of an Ordered webhook waiting behind its first open delivery (0 when Unordered).",
            ["namespace", "webhook"],
            registry=r,
        )
        self.ordered_blocked_seconds = Counter(
            PREFIX + "ordered_blocked_seconds",
            "Time deliveries of an Ordered webhook spent waiting for the deliveries ahead of them.",
            ["namespace", "webhook"],
            registry=r,
        )
        # Label sets seen per webhook, so that all of a deleted webhook's series can be removed.
        self._extra_labels: dict[Key, set[tuple[Counter, tuple[str, ...]]]] = defaultdict(set)
        self._attempt_children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._final_children: dict[tuple[str, ...], Any] = {}
        self._gauges: dict[Key, WebhookGauges] = {}

    def gauges(self, namespace: str, webhook: str) -> WebhookGauges:
        """The webhook's pending, in-flight and ordered-blocked series, looked up once (a lookup costs
        more than the update: it was a twentieth of the operator's CPU in CR mode)."""
        key = (namespace, webhook)
        gauges = self._gauges.get(key)
        if gauges is None:
            gauges = self._gauges[key] = WebhookGauges(
                self.pending.labels(*key), self.in_flight.labels(*key), self.ordered_blocked.labels(*key)
            )
        return gauges

    def attempt(self, namespace: str, webhook: str, code: str, seconds: float) -> None:
        # The series' children are kept per label set: looking them up costs more than counting.
        labels = (namespace, webhook, code)
        children = self._attempt_children.get(labels)
        if children is None:
            children = (self.attempts.labels(*labels), self.duration.labels(namespace, webhook))
            self._attempt_children[labels] = children
            self._extra_labels[(namespace, webhook)].add((self.attempts, labels))
        children[0].inc()
        children[1].observe(seconds)

    def delivery_final(self, namespace: str, webhook: str, event: str, succeeded: bool) -> None:
        labels = (namespace, webhook, event, "success" if succeeded else "failure")
        child = self._final_children.get(labels)
        if child is None:
            child = self._final_children[labels] = self.deliveries.labels(*labels)
            self._extra_labels[(namespace, webhook)].add((self.deliveries, labels))
        child.inc()

    def filtered_out(self, namespace: str, webhook: str, error: bool) -> None:
        labels = (namespace, webhook, "error" if error else "false")
        self.filtered.labels(*labels).inc()
        self._extra_labels[(namespace, webhook)].add((self.filtered, labels))
        if error:
            self.filter_errors.labels(namespace, webhook).inc()
            self._extra_labels[(namespace, webhook)].add((self.filter_errors, (namespace, webhook)))

    def rate_limited(self, namespace: str, webhook: str, seconds: float) -> None:
        self.rate_limit_wait.labels(namespace, webhook).inc(seconds)
        self.rate_limited_attempts.labels(namespace, webhook).inc()

    def ordered_wait(self, namespace: str, webhook: str, seconds: float) -> None:
        self.ordered_blocked_seconds.labels(namespace, webhook).inc(seconds)

    def disabled(self, namespace: str, webhook: str, reason: str) -> None:
        labels = (namespace, webhook, reason)
        self.auto_disabled.labels(*labels).inc()
        self._extra_labels[(namespace, webhook)].add((self.auto_disabled, labels))

    def webhook_state(
        self, namespace: str, webhook: str, *, enabled: bool, ready: bool, suspended: bool = False
    ) -> None:
        self.suspended.labels(namespace, webhook).set(1 if suspended else 0)
        self.enabled.labels(namespace, webhook).set(1 if enabled else 0)
        self.ready.labels(namespace, webhook).set(1 if ready else 0)
        self.in_flight.labels(namespace, webhook)
        self.pending.labels(namespace, webhook)

    def health(self, namespace: str, webhook: str, summary: HealthSummary) -> None:
        self.requests_24h.labels(namespace, webhook).set(summary.requests)
        ratio = summary.ratio
        if ratio is None:
            self._remove(self.success_ratio, (namespace, webhook))
        else:
            self.success_ratio.labels(namespace, webhook).set(ratio)

    def remove_webhook(self, namespace: str, webhook: str) -> None:
        per_webhook: tuple[Counter | Gauge | Histogram, ...] = (
            self.duration,
            self.success_ratio,
            self.requests_24h,
            self.enabled,
            self.ready,
            self.in_flight,
            self.pending,
            self.suspended,
            self.rate_limit_wait,
            self.rate_limited_attempts,
            self.ordered_blocked,
            self.ordered_blocked_seconds,
        )
        self._gauges.pop((namespace, webhook), None)
        for metric in per_webhook:
            self._remove(metric, (namespace, webhook))
        for counter, labels in self._extra_labels.pop((namespace, webhook), set()):
            self._remove(counter, labels)
            self._attempt_children.pop(labels, None)
            self._final_children.pop(labels, None)

    @staticmethod
    def _remove(metric: Counter | Gauge | Histogram, labels: tuple[str, ...]) -> None:
        try:
            metric.remove(*labels)
        except KeyError:
            pass
