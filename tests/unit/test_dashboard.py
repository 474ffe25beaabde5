"""The Grafana dashboard's structure: variables, data source, filters, and queries that parse."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import (
    DASHBOARD_FILE,
    dashboard_panels,
    dashboard_queries,
    find_binary,
    substitute_variables,
)

DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
VARIABLES = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
PANELS = dashboard_panels(DASHBOARD_FILE)
QUERY_PANELS = [panel for panel in PANELS if panel.get("type") != "row"]
TARGETS = [(panel["title"], target) for panel in QUERY_PANELS for target in panel["targets"]]
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
OPERATOR_METRICS = {
    "webhook_operator_deliveries_total",
    "webhook_operator_delivery_attempts_total",
    "webhook_operator_delivery_duration_seconds",
    "webhook_operator_webhook_success_ratio",
    "webhook_operator_webhook_requests_24h",
    "webhook_operator_webhook_enabled",
    "webhook_operator_webhook_ready",
    "webhook_operator_deliveries_in_flight",
    "webhook_operator_deliveries_pending",
    "webhook_operator_leader",
}
# Gauges about one webhook that every replica exports with the same value (a standby follows
# the health the leader writes to status): summing them over pods would count a webhook twice.
PER_WEBHOOK_GAUGES = {
    "webhook_operator_webhook_success_ratio",
    "webhook_operator_webhook_requests_24h",
    "webhook_operator_webhook_enabled",
    "webhook_operator_webhook_ready",
}
# Metrics about the replica itself, without namespace and webhook labels.
REPLICA_METRICS = {"webhook_operator_leader"}
# A metric name with its optional label matchers.
SELECTOR = re.compile(r"\b(webhook_operator_\w+)(\{[^}]*\})?")


def test_dashboard_identity_is_stable_for_provisioning() -> None:
    assert DASHBOARD["uid"] == "webhook-operator"
    assert DASHBOARD["title"] == "Webhook operator"
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    # A fixed id would clash with whatever Grafana assigned on import.
    assert DASHBOARD.get("id") is None


def test_datasource_variable_picks_a_prometheus_data_source() -> None:
    datasource = VARIABLES["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"


@pytest.mark.parametrize("name", ["namespace", "webhook"])
def test_filter_variable_is_a_multi_select_label_values_query_with_all(name: str) -> None:
    variable = VARIABLES[name]
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    assert variable["type"] == "query"
    assert re.fullmatch(rf"label_values\(webhook_operator_\w+(\{{[^}}]*\}})?, {name}\)", query), query
    assert variable["datasource"] == DATASOURCE_REF
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    # Without a regex "All" value Grafana would expand to an alternation of every value.
    assert variable["allValue"] == ".*"


def test_webhook_choices_follow_the_selected_namespaces() -> None:
    query = VARIABLES["webhook"]["query"]["query"]
    assert 'namespace=~"$namespace"' in query


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in QUERY_PANELS:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, panel["title"]


def test_every_operator_metric_selector_filters_by_namespace_and_webhook() -> None:
    for title, target in TARGETS:
        selectors = SELECTOR.findall(target["expr"])
        assert selectors, f"{title}: {target['expr']} reads no operator metric"
        for metric, matchers in selectors:
            if metric in REPLICA_METRICS:
                continue
            assert 'namespace=~"$namespace"' in matchers, f"{title}: {metric} not filtered by namespace"
            assert 'webhook=~"$webhook"' in matchers, f"{title}: {metric} not filtered by webhook"


def test_queries_use_only_metrics_the_operator_exports_and_cover_all_of_them() -> None:
    used = set()
    for _, target in TARGETS:
        for metric, _ in SELECTOR.findall(target["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric) if "duration_seconds" in metric else metric
            used.add(base)
    assert used == OPERATOR_METRICS


def test_per_webhook_gauges_are_taken_once_per_webhook_not_once_per_pod() -> None:
    for title, target in TARGETS:
        expr = target["expr"]
        for match in SELECTOR.finditer(expr):
            if match.group(1) in PER_WEBHOOK_GAUGES:
                before = expr[: match.start()]
                assert re.search(r"\b(max|min) by \(namespace, webhook\) \($", before), (
                    f"{title}: {match.group(0)} is not aggregated by (namespace, webhook): {expr}"
                )


def test_leader_panels_show_which_replica_holds_the_lease() -> None:
    leader = {title: target["expr"] for title, target in TARGETS if "webhook_operator_leader" in target["expr"]}
    assert leader["Leader"] == "max by (instance, pod) (webhook_operator_leader) == 1"
    assert leader["Leader by replica"] == "max by (instance, pod) (webhook_operator_leader)"
    stat = next(panel for panel in QUERY_PANELS if panel["title"] == "Leader")
    assert stat["options"]["textMode"] == "name", "the stat shows the leading replica, not the value 1"
    assert "{{instance}}" in stat["targets"][0]["legendFormat"]


def test_latency_panel_shows_p50_p95_p99_of_the_attempt_histogram() -> None:
    latency = [target["expr"] for title, target in TARGETS if "latency" in title.lower()]
    quantiles = {q for expr in latency for q in re.findall(r"^histogram_quantile\(([\d.]+),", expr)}
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert all("webhook_operator_delivery_duration_seconds_bucket" in expr for expr in latency)
    assert all(re.search(r"\bby \(le\)", expr) for expr in latency)


def test_failing_and_not_ready_tables_exist() -> None:
    tables = {panel["title"]: panel for panel in QUERY_PANELS if panel["type"] == "table"}
    assert "Failing webhooks" in tables
    assert "Webhooks not Ready" in tables
    failing = " ".join(target["expr"] for target in tables["Failing webhooks"]["targets"])
    assert "< 0.99" in failing and 'outcome="failure"' in failing
    not_ready = tables["Webhooks not Ready"]["targets"][0]["expr"]
    assert "webhook_operator_webhook_ready" in not_ready and not_ready.endswith("== 0")


def test_panels_do_not_overlap_on_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_leave_no_variable_unsubstituted() -> None:
    queries = dashboard_queries(DASHBOARD_FILE)
    assert len(queries) == len(TARGETS)
    for title, expr in queries:
        assert "$" not in expr, f"{title}: {expr}"


def test_substitution_rejects_a_variable_without_a_value() -> None:
    with pytest.raises(KeyError, match="cluster"):
        substitute_variables('up{cluster="$cluster"}', {})
    assert substitute_variables("rate(x[${__rate_interval}]) + y[[ns]]", {"__rate_interval": "1m", "ns": "a"}) == (
        "rate(x[1m]) + ya"
    )


def test_every_dashboard_query_parses_with_promtool(tmp_path: Path) -> None:
    # promtool parses rule expressions offline, so each query becomes a recording rule.
    queries = dashboard_queries()
    rules = [{"record": f"dashboard:query_{index}", "expr": expr} for index, (_, expr) in enumerate(queries)]
    rule_file = tmp_path / "dashboard_queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [find_binary("promtool"), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
