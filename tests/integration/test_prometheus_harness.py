"""The Prometheus harness against a real Prometheus scraping a small exporter of the operator's metrics.

Every dashboard query and every alert rule is evaluated by that Prometheus; no Kubernetes needed.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tests.support.prometheus import (
    ALERTS_FILE,
    DASHBOARD_FILE,
    PrometheusNotInstalledError,
    PrometheusQueryError,
    PrometheusServer,
    Sample,
    dashboard_queries,
    find_binary,
)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HEALTHY = ("shop", "billing-sync")
FAILING = ("shop", "crm-push")
NOT_READY = ("ops", "audit")
QUERIES = dashboard_queries(DASHBOARD_FILE)


@dataclass
class Exporter:
    """The operator's metric families in a private registry, served over HTTP on 127.0.0.1."""

    address: str


def _register_metrics(registry: CollectorRegistry) -> tuple[Counter, Counter, Histogram]:
    labels = ["namespace", "webhook"]
    deliveries = Counter(
        "webhook_operator_deliveries",
        "Deliveries, counted once when final",
        [*labels, "event", "outcome"],
        registry=registry,
    )
    attempts = Counter(
        "webhook_operator_delivery_attempts", "HTTP attempts by result", [*labels, "code"], registry=registry
    )
    duration = Histogram(
        "webhook_operator_delivery_duration_seconds", "Attempt duration", labels, buckets=BUCKETS, registry=registry
    )
    gauges = {
        name: Gauge(f"webhook_operator_{name}", name, labels, registry=registry)
        for name in (
            "webhook_success_ratio",
            "webhook_requests_24h",
            "webhook_enabled",
            "webhook_ready",
            "deliveries_in_flight",
            "deliveries_pending",
        )
    }
    for key, ratio, requests, ready in ((HEALTHY, 0.998, 512, 1), (FAILING, 0.5, 40, 1), (NOT_READY, None, 0, 0)):
        # Like the operator: no ratio while a webhook has no requests in the window.
        if ratio is not None:
            gauges["webhook_success_ratio"].labels(*key).set(ratio)
        gauges["webhook_requests_24h"].labels(*key).set(requests)
        gauges["webhook_enabled"].labels(*key).set(1)
        gauges["webhook_ready"].labels(*key).set(ready)
        gauges["deliveries_in_flight"].labels(*key).set(1 if key != NOT_READY else 0)
        gauges["deliveries_pending"].labels(*key).set(2 if key != NOT_READY else 0)
    # This exporter stands for the replica that holds the Lease.
    Gauge("webhook_operator_leader", "1 while this replica holds the Lease", registry=registry).set(1)
    # Children start at 0 before the first scrape, so the first increments show up in rate().
    for key in (HEALTHY, FAILING):
        deliveries.labels(*key, "User.Created", "success")
    deliveries.labels(*FAILING, "User.Created", "failure")
    return deliveries, attempts, duration


def _record_traffic(stop: threading.Event, deliveries: Counter, attempts: Counter, duration: Histogram) -> None:
    for tick in itertools.count():
        if stop.wait(0.1):
            return
        deliveries.labels(*HEALTHY, "User.Created", "success").inc()
        attempts.labels(*HEALTHY, "2xx").inc()
        duration.labels(*HEALTHY).observe(0.04)
        deliveries.labels(*FAILING, "User.Created", "failure").inc()
        attempts.labels(*FAILING, "5xx").inc()
        attempts.labels(*FAILING, "timeout").inc()
        duration.labels(*FAILING).observe(1.2)
        if tick % 3 == 0:
            deliveries.labels(*FAILING, "User.Created", "success").inc()
            attempts.labels(*FAILING, "2xx").inc()


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    deliveries, attempts, duration = _register_metrics(registry)
    server, server_thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    traffic = threading.Thread(target=_record_traffic, args=(stop, deliveries, attempts, duration), daemon=True)
    traffic.start()
    try:
        yield Exporter(f"127.0.0.1:{server.server_port}")
    finally:
        stop.set()
        traffic.join(timeout=5)
        server.shutdown()
        server.server_close()
        server_thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter) -> Iterator[PrometheusServer]:
    with PrometheusServer([exporter.address], rule_files=[ALERTS_FILE]) as server:
        server.wait_until_scraped()
        yield server


def _webhooks(result: list[Sample]) -> set[tuple[str, str]]:
    return {(sample["metric"]["namespace"], sample["metric"]["webhook"]) for sample in result}


@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[f"{i}-{title}" for i, (title, _) in enumerate(QUERIES)])
def test_dashboard_query_evaluates_and_returns_data(prometheus: PrometheusServer, title: str, expr: str) -> None:
    # Rates need two scrapes, so wait; a query Prometheus rejects raises at once.
    result = prometheus.wait_for(expr, timeout=30)
    assert all("value" in sample for sample in result), title


def test_gauge_panels_report_the_exported_values(prometheus: PrometheusServer) -> None:
    queries = dict(dashboard_queries(DASHBOARD_FILE))
    assert prometheus.query(queries["Webhooks"])[0]["value"][1] == "3"
    assert prometheus.query(queries["Not Ready"])[0]["value"][1] == "1"
    assert prometheus.query(queries["Requests (24h)"])[0]["value"][1] == "552"
    # (0.998 * 512 + 0.5 * 40) / 552: webhooks weighted by their traffic
    overall = float(prometheus.query(queries["Success rate (24h)"])[0]["value"][1])
    assert overall == pytest.approx((0.998 * 512 + 0.5 * 40) / 552)


def test_failing_webhooks_table_lists_only_the_failing_webhook(prometheus: PrometheusServer) -> None:
    table = [expr for title, expr in QUERIES if title == "Failing webhooks"]
    assert len(table) == 3
    for expr in table:
        assert _webhooks(prometheus.wait_for(expr, timeout=30)) == {FAILING}


def test_not_ready_table_lists_only_the_webhook_that_is_not_ready(prometheus: PrometheusServer) -> None:
    for expr in [expr for title, expr in QUERIES if title == "Webhooks not Ready"]:
        assert _webhooks(prometheus.query(expr)) == {NOT_READY}


def test_namespace_variable_narrows_every_per_webhook_query(prometheus: PrometheusServer) -> None:
    queries = dict(dashboard_queries(DASHBOARD_FILE, {"namespace": "shop"}))
    assert prometheus.query(queries["Webhooks"])[0]["value"][1] == "2"
    assert prometheus.query(queries["Not Ready"])[0]["value"][1] == "0"
    per_webhook = dict(dashboard_queries(DASHBOARD_FILE, {"namespace": "ops", "webhook": "audit"}))
    assert _webhooks(prometheus.query(per_webhook["Success rate per webhook (24h)"])) == set()


def test_template_variable_queries_list_namespaces_and_their_webhooks(prometheus: PrometheusServer) -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    variables = {v["name"]: v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"}

    def label_values(query: str, namespace: str) -> set[str]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        selector = match.group(1).replace("$namespace", namespace)
        return set(prometheus.api(f"label/{match.group(2)}/values", {"match[]": selector}))

    assert label_values(variables["namespace"], ".*") == {"shop", "ops"}
    assert label_values(variables["webhook"], "shop") == {"billing-sync", "crm-push"}


def test_alert_rules_load_and_evaluate_without_errors(prometheus: PrometheusServer) -> None:
    # The group's rules are evaluated together: once ALERTS exists, each has run once.
    prometheus.wait_for("ALERTS", timeout=30)
    rules = prometheus.rules()
    assert {rule["name"] for rule in rules} == {
        "WebhookSuccessRateLow",
        "WebhookDeliveriesFailing",
        "WebhookOperatorDown",
        "WebhookDeliveryBacklogGrowing",
        "WebhookNotReady",
        "WebhookOperatorNoLeader",
    }
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


def test_alerts_go_pending_for_the_low_ratio_and_the_not_ready_webhook_only(prometheus: PrometheusServer) -> None:
    expected = {("WebhookSuccessRateLow", *FAILING), ("WebhookNotReady", *NOT_READY)}

    def active(result: list[Sample]) -> set[tuple[str, str, str]]:
        return {(s["metric"]["alertname"], s["metric"]["namespace"], s["metric"]["webhook"]) for s in result}

    result = prometheus.wait_for("ALERTS", lambda r: active(r) >= expected, timeout=30)
    assert active(result) == expected
    assert {sample["metric"]["alertstate"] for sample in result} == {"pending"}


def test_query_error_carries_the_prometheus_message(prometheus: PrometheusServer) -> None:
    with pytest.raises(PrometheusQueryError, match="parse error"):
        prometheus.query("sum(")


def test_wait_for_times_out_with_the_last_result(prometheus: PrometheusServer) -> None:
    with pytest.raises(TimeoutError, match="never_exported_metric"):
        prometheus.wait_for("never_exported_metric", timeout=0.5)


def test_server_stops_and_removes_its_storage_when_the_block_ends() -> None:
    with PrometheusServer([]) as server:
        url, workdir = server.url, server.workdir
        assert (workdir / "data").is_dir()
        assert server.query("vector(1)")[0]["value"][1] == "1"
    assert server.port == 0
    assert not workdir.exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/-/ready", timeout=2)


def test_missing_binary_fails_with_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_BIN_DIR", raising=False)
    with pytest.raises(PrometheusNotInstalledError, match="apt-get install prometheus"):
        find_binary("promtool")
    with pytest.raises(PrometheusNotInstalledError, match="apt-get install prometheus"), PrometheusServer([]):
        pass
