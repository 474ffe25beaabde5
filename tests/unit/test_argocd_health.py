"""The Argo CD health checks in deploy/argocd-health/, run in Lua 5.1 (what Argo CD embeds) on sample objects."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_DIR = REPO / "deploy" / "argocd-health"
WEBHOOK_LUA = HEALTH_DIR / "webhook.lua"
WEBHOOKEVENT_LUA = HEALTH_DIR / "webhookevent.lua"


def to_lua(runtime: Any, value: Any) -> Any:
    """Python JSON value -> Lua value; nulls become absent keys, as in Argo CD's conversion."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def run_health_source(source: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run a health script the way Argo CD does: global ``obj``, a returned table."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(source)
    return {"status": result["status"], "message": result["message"]}


def run_health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    return run_health_source(script.read_text(), obj)


def webhook(generation: int = 1, enabled: bool | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": "https://hooks.example.com/identity", "events": ["User.Created"]}
    if enabled is not None:
        spec["enabled"] = enabled
    obj: dict[str, Any] = {
        "apiVersion": "webhook-operator.io/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": "billing-sync", "namespace": "shop", "generation": generation},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def condition(type_: str, status: str, reason: str, message: str, generation: int = 1) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-11-28T03:00:00Z",
    }


READY = condition("Ready", "True", "Reconciled", "Webhook is ready")
HEALTHY = condition("Healthy", "True", "SuccessRateOK", "99.80% of 512 requests in 24h")


def webhook_status(*conditions: dict[str, Any], observed: int = 1) -> dict[str, Any]:
    return {"observedGeneration": observed, "conditions": list(conditions)}


def test_webhook_without_status_is_progressing() -> None:
    assert run_health(WEBHOOK_LUA, webhook())["status"] == "Progressing"


def test_webhook_with_status_but_no_conditions_is_progressing() -> None:
    assert run_health(WEBHOOK_LUA, webhook(status={"observedGeneration": 1}))["status"] == "Progressing"


def test_webhook_ready_and_healthy_is_healthy_with_the_success_rate_as_message() -> None:
    result = run_health(WEBHOOK_LUA, webhook(status=webhook_status(READY, HEALTHY)))
    assert result == {"status": "Healthy", "message": "99.80% of 512 requests in 24h"}


def test_webhook_ready_without_requests_yet_is_healthy() -> None:
    no_requests = condition("Healthy", "Unknown", "NoRequests", "no requests in 24h")
    result = run_health(WEBHOOK_LUA, webhook(status=webhook_status(READY, no_requests)))
    assert result == {"status": "Healthy", "message": "Reconciled: Webhook is ready"}


def test_webhook_with_unobserved_generation_is_progressing_even_if_ready() -> None:
    result = run_health(WEBHOOK_LUA, webhook(generation=3, status=webhook_status(READY, HEALTHY, observed=2)))
    assert result["status"] == "Progressing"
    assert "generation 3" in result["message"]


def test_webhook_whose_ready_condition_is_from_an_older_generation_is_progressing() -> None:
    result = run_health(WEBHOOK_LUA, webhook(generation=2, status=webhook_status(READY, observed=2)))
    assert result["status"] == "Progressing"


def test_webhook_not_ready_is_degraded_with_the_reason_and_message() -> None:
    not_ready = condition("Ready", "False", "InsecureURL", "http:// URLs need --allow-http; use https://")
    result = run_health(WEBHOOK_LUA, webhook(status=webhook_status(not_ready)))
    assert result == {"status": "Degraded", "message": "InsecureURL: http:// URLs need --allow-http; use https://"}


def test_webhook_ready_but_unhealthy_is_degraded() -> None:
    critical = condition("Healthy", "False", "SuccessRateLow", "41.00% of 100 requests in 24h")
    result = run_health(WEBHOOK_LUA, webhook(status=webhook_status(READY, critical)))
    assert result == {"status": "Degraded", "message": "SuccessRateLow: 41.00% of 100 requests in 24h"}


def test_webhook_with_ready_unknown_is_progressing() -> None:
    unknown = condition("Ready", "Unknown", "Reconciling", "checking the destination")
    assert run_health(WEBHOOK_LUA, webhook(status=webhook_status(unknown)))["status"] == "Progressing"


def test_disabled_webhook_is_suspended_whatever_its_conditions() -> None:
    not_ready = condition("Ready", "False", "MissingSecret", "Secret billing-token not found")
    result = run_health(WEBHOOK_LUA, webhook(enabled=False, status=webhook_status(not_ready)))
    assert result["status"] == "Suspended"
    assert "disabled" in result["message"]


def test_explicitly_enabled_webhook_is_judged_by_its_conditions() -> None:
    assert run_health(WEBHOOK_LUA, webhook(enabled=True, status=webhook_status(READY)))["status"] == "Healthy"


def event(status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "webhook-operator.io/v1alpha1",
        "kind": "WebhookEvent",
        "metadata": {"name": "user-created-x7k2p", "namespace": "shop", "generation": 1},
        "spec": {"event": "User.Created", "data": {"id": "u_123"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def delivery(webhook_name: str, outcome: str, error: str = "") -> dict[str, Any]:
    return {"webhook": webhook_name, "id": f"msg_{webhook_name}", "outcome": outcome, "attempts": 1, "error": error}


def test_event_without_status_is_progressing() -> None:
    assert run_health(WEBHOOKEVENT_LUA, event())["status"] == "Progressing"


@pytest.mark.parametrize("phase", ["Pending", "Delivering"])
def test_event_in_flight_is_progressing(phase: str) -> None:
    result = run_health(WEBHOOKEVENT_LUA, event({"phase": phase, "deliveries": [delivery("a", "Retrying")]}))
    assert result == {"status": "Progressing", "message": f"{phase}: 1 subscribed webhook(s)"}


def test_delivered_event_is_healthy() -> None:
    status = {"phase": "Delivered", "deliveries": [delivery("a", "Succeeded"), delivery("b", "Succeeded")]}
    assert run_health(WEBHOOKEVENT_LUA, event(status)) == {"status": "Healthy", "message": "Delivered to 2 webhook(s)"}


def test_event_without_subscribers_is_healthy_and_names_the_event() -> None:
    result = run_health(WEBHOOKEVENT_LUA, event({"phase": "NoSubscribers"}))
    assert result["status"] == "Healthy"
    assert "User.Created" in result["message"]


def test_failed_event_is_degraded_and_names_the_webhook_and_error() -> None:
    status = {"phase": "Failed", "deliveries": [delivery("a", "Failed", "HTTP 503")]}
    result = run_health(WEBHOOKEVENT_LUA, event(status))
    assert result == {"status": "Degraded", "message": "Failed: 1 of 1 deliveries failed: a (HTTP 503)"}


def test_partially_failed_event_is_degraded_and_counts_only_the_failures() -> None:
    status = {
        "phase": "PartiallyFailed",
        "deliveries": [delivery("a", "Succeeded"), delivery("b", "Failed", "timeout"), delivery("c", "Failed")],
    }
    result = run_health(WEBHOOKEVENT_LUA, event(status))
    assert result == {"status": "Degraded", "message": "PartiallyFailed: 2 of 3 deliveries failed: b (timeout), c"}


def test_event_with_an_unknown_phase_is_unknown() -> None:
    assert run_health(WEBHOOKEVENT_LUA, event({"phase": "Exploded"}))["status"] == "Unknown"


def event_condition(type_: str, status: str, phase: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": phase, "message": "1/2 delivered", "lastTransitionTime": "x"}


@pytest.mark.parametrize(
    ("phase", "written", "expected"),
    [
        ("Delivering", [("Reconciling", "True")], "Progressing"),
        ("Delivered", [("Ready", "True")], "Healthy"),
        ("NoSubscribers", [("Ready", "True")], "Healthy"),
        ("Failed", [("Ready", "False"), ("Stalled", "True")], "Degraded"),
        ("PartiallyFailed", [("Ready", "False"), ("Stalled", "True")], "Degraded"),
    ],
)
def test_event_conditions_give_the_same_health_as_the_phase(
    phase: str, written: list[tuple[str, str]], expected: str
) -> None:
    status = {"phase": phase, "conditions": [event_condition(t, v, phase) for t, v in written]}
    assert run_health(WEBHOOKEVENT_LUA, event(status))["status"] == expected


def test_event_conditions_decide_when_they_and_the_phase_disagree() -> None:
    status = {"phase": "Exploded", "conditions": [event_condition("Stalled", "True", "Failed")]}
    assert run_health(WEBHOOKEVENT_LUA, event(status))["status"] == "Degraded"


def test_stalled_webhook_is_degraded_with_the_stalled_message() -> None:
    stalled = condition("Stalled", "True", "InvalidURL", "spec.url: port 0 is not a usable port")
    result = run_health(WEBHOOK_LUA, webhook(status=webhook_status(READY, stalled)))
    assert result == {"status": "Degraded", "message": "InvalidURL: spec.url: port 0 is not a usable port"}


def test_health_scripts_leave_the_object_untouched() -> None:
    obj = webhook(status=webhook_status(READY, HEALTHY))
    before = copy.deepcopy(obj)
    run_health(WEBHOOK_LUA, obj)
    assert obj == before


def lua_blocks_in_markdown(text: str) -> dict[str, str]:
    """The argocd-cm keys and their Lua from the YAML snippet in the docs."""
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm":
            return dict(doc["data"])
    raise AssertionError("no argocd-cm ConfigMap snippet found")


EXPECTED_KEYS = {
    "resource.customizations.health.webhook-operator.io_Webhook": WEBHOOK_LUA,
    "resource.customizations.health.webhook-operator.io_WebhookEvent": WEBHOOKEVENT_LUA,
}


def test_install_docs_carry_the_same_lua_as_deploy_argocd_health() -> None:
    data = lua_blocks_in_markdown((REPO / "README.md").read_text())
    for key, script in EXPECTED_KEYS.items():
        assert data[key] == script.read_text(), f"{key} in README.md differs from {script.name}"


def test_argocd_example_patch_carries_the_same_lua_as_deploy_argocd_health() -> None:
    doc = yaml.safe_load((REPO / "examples" / "argocd" / "argocd-cm-health.yaml").read_text())
    for key, script in EXPECTED_KEYS.items():
        assert doc["data"][key] == script.read_text(), f"{key} in the example differs from {script.name}"


def test_argocd_example_application_check_follows_the_child_applications_health() -> None:
    doc = yaml.safe_load((REPO / "examples" / "argocd" / "argocd-cm-health.yaml").read_text())
    script = doc["data"]["resource.customizations.health.argoproj.io_Application"]
    assert run_health_source(script, {"kind": "Application"})["status"] == "Progressing"
    degraded = {"kind": "Application", "status": {"health": {"status": "Degraded", "message": "crd missing"}}}
    assert run_health_source(script, degraded) == {"status": "Degraded", "message": "crd missing"}
    healthy = {"kind": "Application", "status": {"health": {"status": "Healthy"}}}
    assert run_health_source(script, healthy) == {"status": "Healthy", "message": ""}
