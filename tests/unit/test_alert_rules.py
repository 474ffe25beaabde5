"""The alert rules file: promtool accepts it, its unit tests pass, every alert is documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus import ALERTS_FILE, REPO_ROOT, find_binary

ALERT_TESTS_FILE = REPO_ROOT / "tests" / "prometheus" / "alerts_test.yaml"
MONITORING_DOC = REPO_ROOT / "README.md"
RUNBOOK_BASE = "https://github.com/webhook-operator/webhook-operator/blob/main/README.md#runbook-"
EXPECTED_ALERTS = {
    "WebhookSuccessRateLow",
    "WebhookDeliveriesFailing",
    "WebhookOperatorDown",
    "WebhookOperatorNoLeader",
    "WebhookDeliveryBacklogGrowing",
    "WebhookNotReady",
}


def _load_alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


ALERTS = _load_alerts()
ALERT_IDS = [rule["alert"] for rule in ALERTS]


def _promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = _promtool("check", "rules", str(ALERTS_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    # rule_files in the test file are relative to the test file's directory.
    result = _promtool("test", "rules", ALERT_TESTS_FILE.name, cwd=ALERT_TESTS_FILE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_file_has_one_group_named_webhook_operator_with_the_expected_alerts() -> None:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    assert [group["name"] for group in groups] == ["webhook-operator"]
    assert set(ALERT_IDS) == EXPECTED_ALERTS
    assert len(ALERT_IDS) == len(set(ALERT_IDS))


def test_rule_file_uses_only_operator_metrics_and_up() -> None:
    text = "\n".join(rule["expr"] for rule in ALERTS)
    metrics = set(re.findall(r"\b(webhook_operator_\w+)", text))
    assert metrics <= {
        "webhook_operator_deliveries_total",
        "webhook_operator_webhook_success_ratio",
        "webhook_operator_webhook_requests_24h",
        "webhook_operator_webhook_enabled",
        "webhook_operator_webhook_ready",
        "webhook_operator_deliveries_pending",
        "webhook_operator_leader",
    }


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_has_severity_summary_description_and_runbook_url(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()
    assert "for" in rule, "every alert waits before firing, so one bad scrape does not page"


@pytest.mark.parametrize("name", ALERT_IDS)
def test_alert_has_a_unit_test_that_fires_it_and_one_that_does_not(name: str) -> None:
    cases = [
        case
        for test in yaml.safe_load(ALERT_TESTS_FILE.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
    ]
    firing = [case for case in cases if case.get("exp_alerts")]
    assert firing, f"no promtool case expects {name} to fire"
    assert any(not case.get("exp_alerts") for case in cases), f"no promtool case expects {name} to stay silent"
    for case in firing:
        for alert in case["exp_alerts"]:
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
            assert "severity" in alert["exp_labels"]


@pytest.mark.parametrize("name", ALERT_IDS)
def test_monitoring_doc_has_a_runbook_section_for_alert(name: str) -> None:
    headings = re.findall(r"^### (\S+)\s*$", MONITORING_DOC.read_text(), flags=re.MULTILINE)
    assert f"runbook-{name.lower()}" in headings
