"""Monitoring against the live operator: a real Prometheus scrapes it, every dashboard panel and alert rule
runs on those series, health survives restarts, deleted webhooks' series go, and no secret leaks.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    annotate,
    apply,
    condition,
    create,
    delete,
    event_manifest,
    get,
    metric_samples,
    metric_value,
    secret_data,
    secret_manifest,
    send_event,
    series_with_labels,
    wait_for_condition,
    wait_for_object,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.operator_process import OperatorProcess, free_port
from tests.support.prometheus import (
    ALERTS_FILE,
    DASHBOARD_FILE,
    PrometheusServer,
    Sample,
    dashboard_queries,
)
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration

FAST = {"backoffSeconds": 0.1, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
RATIO = "webhook_operator_webhook_success_ratio"
REQUESTS = "webhook_operator_webhook_requests_24h"
DELIVERIES = "webhook_operator_deliveries_total"


# -- helpers ----------------------------------------------------------------------------------
def add_webhook(kubectl: KubectlFn, namespace: str, name: str, url: str, max_retries: int = 1, **spec: Any) -> None:
    retry = {"maxRetries": max_retries, **FAST, **spec.pop("retry", {})}
    apply(kubectl, namespace, webhook_manifest(name, url, ["User.*"], retry=retry, **spec))


def health(kubectl: KubectlFn, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(kubectl, namespace, f"webhook/{name}").get("status") or {}).get("health") or {})


def wait_health(kubectl: KubectlFn, namespace: str, name: str, requests: int, timeout: float = 20.0) -> dict[str, Any]:
    """status.health once the operator has flushed ``requests`` deliveries into it."""
    obj = wait_for_object(
        kubectl,
        namespace,
        f"webhook/{name}",
        lambda o: ((o.get("status") or {}).get("health") or {}).get("requests") == requests,
        timeout=timeout,
        what=f"webhook/{name} status.health.requests == {requests}",
    )
    return dict(obj["status"]["health"])


def gauges(text: str, namespace: str, names: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """(success ratio, requests 24h) per webhook, as one /metrics exposition shows them."""
    return {
        n: (
            metric_value(text, RATIO, namespace=namespace, webhook=n),
            metric_value(text, REQUESTS, namespace=namespace, webhook=n),
        )
        for n in names
    }


def metrics_when(operator: OperatorProcess, predicate: Callable[[str], bool], what: str) -> str:
    """The operator's /metrics text once ``predicate`` holds for it."""

    def probe() -> str | None:
        text = operator.metrics()
        return text if predicate(text) else None

    return wait_until(probe, timeout=10, interval=0.02, what=what)


def has_value(name: str, value: float, **labels: str) -> Callable[[str], bool]:
    return lambda text: metric_value(text, name, **labels) == value


def by_webhook(samples: list[Sample]) -> dict[str, float]:
    return {s["metric"]["webhook"]: float(s["value"][1]) for s in samples}


def assert_ratio_matches_health(ratio: float | None, requests: float | None, status_health: dict[str, Any]) -> None:
    assert requests == status_health["requests"]
    if status_health["requests"] == 0:
        assert ratio is None, "a webhook without requests has no ratio series"
        assert status_health["successRate"] == "-"
        return
    assert ratio is not None
    assert ratio == pytest.approx(status_health["succeeded"] / status_health["requests"], rel=1e-9)
    # successRate shows two decimals, truncated; the ratio is the exact share.
    assert float(status_health["successRate"].rstrip("%")) == pytest.approx(ratio * 100, abs=0.01)
    assert float(status_health["successRate"].rstrip("%")) <= ratio * 100 + 1e-9


@pytest.fixture
def prometheus_for() -> Iterator[Any]:
    """prometheus_for(operator): a real Prometheus scraping that operator every second, with the alert rules."""
    servers: list[PrometheusServer] = []

    def start(operator: OperatorProcess) -> PrometheusServer:
        server = PrometheusServer([f"127.0.0.1:{operator.metrics_port}"], rule_files=[ALERTS_FILE])
        servers.append(server)
        server.__enter__()
        server.wait_until_scraped()
        return server

    yield start
    for server in servers:
        server.stop()


# -- 1. dashboard and alerts on live series ---------------------------------------------------------
def test_every_dashboard_panel_and_alert_rule_has_data_from_the_live_operator(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    prometheus_for: Any,
) -> None:
    operator = start_operator(namespace)
    # alpha: 200, 400 (not retried), then 200s -> 3 of 4; beta: 503 then 200s -> 4 of 4 with a retry;
    # gamma: always 500 -> 0 of 4 after one retry each; delta: http:// without --allow-http -> not Ready.
    receiver.script("/alpha", Reply(200), Reply(400), Reply(200))
    receiver.script("/beta", Reply(503), Reply(200))
    receiver.script("/gamma", Reply(500))
    add_webhook(kubectl, namespace, "alpha", receiver.url("/alpha"))
    add_webhook(kubectl, namespace, "beta", receiver.url("/beta"))
    add_webhook(kubectl, namespace, "gamma", receiver.url("/gamma"))
    add_webhook(kubectl, namespace, "delta", f"http://127.0.0.1:{receiver.port}/delta")
    for name in ("alpha", "beta", "gamma"):
        wait_ready(kubectl, namespace, name)
    wait_for_condition(kubectl, namespace, "webhook/delta", "Ready", "False")

    prom = prometheus_for(operator)
    # Counters appear with their first increment, and rate() cannot see a series' first sample:
    # let Prometheus scrape after the first event, so the later ones show up as increases.
    send_event(kubectl, namespace, "User.Created", {"n": 0})
    prom.wait_for(f'webhook_operator_deliveries_total{{namespace="{namespace}"}}', lambda r: len(r) >= 3)
    for n in range(1, 4):
        final = send_event(kubectl, namespace, "User.Created", {"n": n})
    finished = time.monotonic()
    outcomes = {d["webhook"]: d["outcome"] for d in final["status"]["deliveries"]}
    assert outcomes == {"alpha": "Succeeded", "beta": "Succeeded", "gamma": "Failed"}

    statuses = {name: wait_health(kubectl, namespace, name, 4) for name in ("alpha", "beta", "gamma")}
    statuses["delta"] = health(kubectl, namespace, "delta")
    assert [statuses[n]["succeeded"] for n in ("alpha", "beta", "gamma")] == [3, 4, 0]
    assert statuses["delta"]["requests"] == 0

    selector = f'{{namespace="{namespace}"}}'
    total = prom.wait_for(
        f"sum(webhook_operator_webhook_requests_24h{selector})", lambda r: r and r[0]["value"][1] == "12"
    )
    print(f"\nPrometheus shows all 12 deliveries {time.monotonic() - finished:.2f}s after the last event was final")
    assert total[0]["value"][1] == "12"

    ratios = by_webhook(prom.query(f"{RATIO}{selector}"))
    requests = by_webhook(prom.query(f"{REQUESTS}{selector}"))
    assert set(requests) == {"alpha", "beta", "gamma", "delta"}
    for name, status_health in statuses.items():
        assert_ratio_matches_health(ratios.get(name), requests[name], status_health)

    queries = dashboard_queries(DASHBOARD_FILE, {"namespace": namespace})
    assert len({title for title, _ in queries}) >= 10, "the dashboard lost panels"
    results: dict[str, list[float]] = {}
    for title, expr in queries:
        samples = prom.query(expr)
        assert samples, f"panel {title!r} has no data: {expr}"
        values = [float(s["value"][1]) for s in samples]
        assert all(math.isfinite(v) for v in values), f"panel {title!r} returned {values}: {expr}"
        results.setdefault(title, []).extend(values)
    # The stat panels show what the Webhooks' status says.
    assert results["Webhooks"] == [4]
    assert results["Not Ready"] == [1]
    assert results["Requests (24h)"] == [12]
    assert results["Success rate (24h)"] == [pytest.approx(7 / 12)]
    assert results["Failed deliveries"][0] > 0
    assert results["Leader"] == [1], "the one operator holds the Lease"
    not_ready = prom.query(dict(queries)["Webhooks not Ready"])
    assert {s["metric"]["webhook"] for s in not_ready} == {"delta"}

    rules = prom.rules()
    assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # Every rule with a `for:` is at least pending for the webhook it is about.
    expected = {
        ("WebhookSuccessRateLow", "gamma"),
        ("WebhookSuccessRateLow", "alpha"),
        ("WebhookDeliveriesFailing", "gamma"),
        ("WebhookNotReady", "delta"),
    }

    def active() -> set[tuple[str, str]] | None:
        got = {(a["labels"]["alertname"], a["labels"].get("webhook", "")) for a in prom.alerts()}
        return got if expected <= got else None

    got = wait_until(active, timeout=15, what="the alerts about the failing and the not-Ready webhook")
    assert ("WebhookSuccessRateLow", "beta") not in got
    assert not any(name == "WebhookOperatorDown" for name, _ in got)


def test_metrics_reflect_a_delivery_within_a_health_flush(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"))
    wait_ready(kubectl, namespace, "hook")
    lags: list[tuple[float, float]] = []
    for n in range(1, 6):
        # Poll /metrics while the delivery happens, not after a final phase has been read back.
        create(kubectl, namespace, event_manifest("User.Created", {"n": n}))
        metrics_when(operator, has_value(DELIVERIES, n, namespace=namespace, outcome="success"), f"{n} deliveries")
        counted = time.time()
        metrics_when(operator, has_value(REQUESTS, n, namespace=namespace, webhook="hook"), f"requests_24h == {n}")
        in_window = time.time()
        sent = receiver.wait_for(n, "/hook")[-1].at
        lags.append((counted - sent, in_window - sent))
    print(
        "\nreceiver got the request -> deliveries_total / requests_24h on /metrics (s): "
        + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in lags)
    )
    # requests_24h follows the health flush (0.5s here), not the next full resync a minute later.
    assert max(b for _, b in lags) < 5


# -- 2. health survives restarts -----------------------------------------------------------------
def test_health_and_24h_gauges_survive_graceful_and_sigkill_restarts(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/bad", Reply(500))
    add_webhook(kubectl, namespace, "good", receiver.url("/good"))
    add_webhook(kubectl, namespace, "bad", receiver.url("/bad"), max_retries=0)
    wait_ready(kubectl, namespace, "good")
    wait_ready(kubectl, namespace, "bad")
    names = ["good", "bad"]
    expected = 0

    def deliver(count: int) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[float | None, float | None]]]:
        nonlocal expected
        for n in range(count):
            send_event(kubectl, namespace, "User.Created", {"n": n})
        expected += count
        statuses = {name: wait_health(kubectl, namespace, name, expected) for name in names}
        text = metrics_when(
            operator, lambda t: gauges(t, namespace, names)["bad"][1] == expected, "requests_24h on /metrics"
        )
        return statuses, gauges(text, namespace, names)

    def assert_unchanged_after_restart(
        before: dict[str, dict[str, Any]], old_gauges: dict[str, tuple[float | None, float | None]]
    ) -> None:
        # Several flush intervals, so a reset or a rewrite by the new process would have landed.
        time.sleep(2)
        after = {name: health(kubectl, namespace, name) for name in names}
        assert after == before
        new_gauges = gauges(operator.metrics(), namespace, names)
        assert new_gauges == old_gauges
        for name in names:
            assert_ratio_matches_health(*new_gauges[name], after[name])

    before, old = deliver(3)
    assert before["good"]["successRate"] == "100.00%" and before["bad"]["successRate"] == "0.00%"
    assert before["bad"]["state"] == "Critical" and before["good"]["state"] == "Healthy"
    assert before["good"]["buckets"], "the window is persisted as buckets"
    operator.stop()
    operator.start()
    assert_unchanged_after_restart(before, old)

    before, old = deliver(2)
    assert before["good"]["requests"] == 5, "the restarted operator counts on from the persisted window"
    # deliver() waited for the flushed status; only now is a SIGKILL sure to lose nothing.
    operator.kill()
    operator.start()
    assert_unchanged_after_restart(before, old)
    assert (condition(get(kubectl, namespace, "webhook/bad"), "Healthy") or {}).get("status") == "False"


# -- 3. deleted webhooks leave no series ------------------------------------------------------------
def test_series_of_a_deleted_webhook_disappear_from_metrics(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    # gone: 500, 500 (retried once, then failed), then 200s; two event names, so several label sets.
    receiver.script("/gone", Reply(500), Reply(500), Reply(200))
    add_webhook(kubectl, namespace, "gone", receiver.url("/gone"))
    add_webhook(kubectl, namespace, "kept", receiver.url("/kept"))
    wait_ready(kubectl, namespace, "gone")
    wait_ready(kubectl, namespace, "kept")
    send_event(kubectl, namespace, "User.Created")
    send_event(kubectl, namespace, "User.Deleted")
    wait_health(kubectl, namespace, "gone", 2)

    def families(text: str, webhook: str) -> set[str]:
        return set(series_with_labels(text, namespace=namespace, webhook=webhook))

    text = metrics_when(
        operator, lambda t: metric_value(t, REQUESTS, namespace=namespace, webhook="gone") == 2, "gone's requests_24h"
    )
    present = families(text, "gone")
    for family in (
        "webhook_operator_deliveries_total",
        "webhook_operator_delivery_attempts_total",
        "webhook_operator_delivery_duration_seconds_bucket",
        "webhook_operator_delivery_duration_seconds_count",
        RATIO,
        REQUESTS,
        "webhook_operator_webhook_enabled",
        "webhook_operator_webhook_ready",
        "webhook_operator_deliveries_in_flight",
        "webhook_operator_deliveries_pending",
    ):
        assert family in present, f"{family} has no series for the webhook before deletion"
    outcomes = {
        (labels["event"], labels["outcome"])
        for labels, _ in _samples(text, "webhook_operator_deliveries_total", namespace, "gone")
    }
    assert outcomes == {("User.Created", "failure"), ("User.Deleted", "success")}
    codes = {
        labels["code"] for labels, _ in _samples(text, "webhook_operator_delivery_attempts_total", namespace, "gone")
    }
    assert codes == {"5xx", "2xx"}
    kept_before = families(text, "kept")

    delete(kubectl, namespace, "webhook/gone")
    deleted = time.monotonic()
    wait_until(lambda: not families(operator.metrics(), "gone"), timeout=10, interval=0.05, what="gone's series to go")
    print(f"\nseries of a deleted webhook gone from /metrics {time.monotonic() - deleted:.2f}s after `kubectl delete`")
    # The garbage-collected signing-key Secret and further events must not bring any back.
    send_event(kubectl, namespace, "User.Created")
    wait_health(kubectl, namespace, "kept", 3)
    time.sleep(1)
    text = operator.metrics()
    assert not families(text, "gone"), sorted(families(text, "gone"))
    assert families(text, "kept") == kept_before


def _samples(text: str, name: str, namespace: str, webhook: str) -> list[tuple[dict[str, str], float]]:
    return [
        (labels, v)
        for labels, v in metric_samples(text, name)
        if labels.get("namespace") == namespace and labels.get("webhook") == webhook
    ]


# -- 4. no secret material in metrics or logs ----------------------------------------------------------
@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
def test_no_key_header_value_or_url_path_in_metrics_logs_or_events(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    log_level: str,
) -> None:
    operator = start_operator(namespace, "--log-level", log_level)
    token = f"Bearer tok-{uuid.uuid4().hex}"
    path_secret, query_secret = f"p{uuid.uuid4().hex}", f"q{uuid.uuid4().hex}"
    apply(kubectl, namespace, secret_manifest("hdr", {"token": token}))
    path = f"/{path_secret}/in"
    # 200, 503 then 200 (a retry), a timeout, then a non-retried 400: every code path that writes an error.
    receiver.script(path, Reply(200), Reply(503), Reply(200), Reply(200, delay_s=2), Reply(400))
    headers = [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "hdr", "key": "token"}}}]
    add_webhook(
        kubectl,
        namespace,
        "secretive",
        receiver.url(f"{path}?token={query_secret}"),
        headers=headers,
        retry={"timeoutSeconds": 1},
    )
    # Nothing listens there: connection errors, with a secret path and query of their own.
    closed = f"https://127.0.0.1:{free_port()}/{path_secret}/refused?token={query_secret}"
    add_webhook(kubectl, namespace, "refused", closed, max_retries=0)
    wait_ready(kubectl, namespace, "secretive")
    wait_ready(kubectl, namespace, "refused")
    first_key = secret_data(get(kubectl, namespace, "secret/secretive-signing-key"))

    for n in range(4):
        send_event(kubectl, namespace, "User.Created", {"n": n})
    annotate(kubectl, namespace, "webhook/secretive", "webhook-operator.io/test-requested-at", "t1")
    annotate(kubectl, namespace, "webhook/secretive", "webhook-operator.io/rotate-key-requested-at", "r1")
    wait_for_object(
        kubectl,
        namespace,
        "webhook/secretive",
        lambda o: (
            "rotatedAt" in ((o.get("status") or {}).get("keyRotation") or {})
            and ((o.get("status") or {}).get("lastTest") or {}).get("completedAt")
        ),
        what="key rotation and test payload recorded",
    )
    send_event(kubectl, namespace, "User.Created", {"n": 4})
    wait_health(kubectl, namespace, "secretive", 5)
    wait_health(kubectl, namespace, "refused", 5)
    requests = receiver.received(f"{path}?token={query_secret}")
    assert requests and all(r.headers.get("authorization") == token for r in requests), "the header was not sent"
    assert {r.path for r in requests} == {f"{path}?token={query_secret}"}

    second_key = secret_data(get(kubectl, namespace, "secret/secretive-signing-key"))
    secrets = {
        "header value": token.removeprefix("Bearer "),
        "URL path": path_secret,
        "URL query": query_secret,
    }
    for label, data in (("first", first_key), ("rotated", second_key)):
        for field, value in data.items():
            secrets[f"{label} {field}"] = value.removeprefix("whsec_")
    assert first_key["signingKey"] != second_key["signingKey"], "the key was not rotated"

    time.sleep(1)  # the last health flush and its log lines
    metrics = operator.metrics()
    log = operator.log()
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "webhook_operator_deliveries_total" in metrics and len(log) > 0
    for where, text in (("/metrics", metrics), ("operator log", log), ("Kubernetes Events", events)):
        leaked = [label for label, value in secrets.items() if value in text]
        assert not leaked, f"{', '.join(leaked)} found in the {where}"
