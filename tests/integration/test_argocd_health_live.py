"""The Argo CD health checks on real objects: created, status-patched and read back from the API server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.test_argocd_health import WEBHOOK_LUA, WEBHOOKEVENT_LUA, run_health

pytestmark = pytest.mark.integration

KubectlFn = Callable[..., subprocess.CompletedProcess[str]]
WEBHOOKS = "webhooks.webhook-operator.io"
EVENTS = "webhookevents.webhook-operator.io"
NOW = "2026-11-28T03:00:00Z"


def apply(kubectl: KubectlFn, namespace: str, manifest: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def read(kubectl: KubectlFn, namespace: str, resource: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", resource, name, "-n", namespace, "-o", "json").stdout)
    return result


def patch_status(kubectl: KubectlFn, namespace: str, resource: str, name: str, status: dict[str, Any]) -> None:
    kubectl(
        "patch",
        resource,
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def patch_spec(kubectl: KubectlFn, namespace: str, resource: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("patch", resource, name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))


def webhook_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "webhook-operator.io/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {"url": "https://hooks.example.com/identity", "events": ["User.Created", "Organization.*"]},
    }


def condition(type_: str, status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": NOW,
    }


def webhook_health(kubectl: KubectlFn, namespace: str, name: str) -> dict[str, str]:
    return run_health(WEBHOOK_LUA, read(kubectl, namespace, WEBHOOKS, name))


def test_new_webhook_is_progressing_until_the_operator_reports(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_manifest("fresh"))
    live = read(kubectl, namespace, WEBHOOKS, "fresh")
    assert live["spec"]["enabled"] is True, "the CRD defaults enabled; the script must treat it as enabled"
    assert run_health(WEBHOOK_LUA, live)["status"] == "Progressing"


def test_ready_webhook_is_healthy_until_its_spec_changes(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_manifest("billing-sync"))
    ready = condition("Ready", "True", "Reconciled", "Webhook is ready", 1)
    healthy = condition("Healthy", "True", "SuccessRateOK", "99.80% of 512 requests in 24h", 1)
    patch_status(
        kubectl, namespace, WEBHOOKS, "billing-sync", {"observedGeneration": 1, "conditions": [ready, healthy]}
    )
    assert webhook_health(kubectl, namespace, "billing-sync") == {
        "status": "Healthy",
        "message": "99.80% of 512 requests in 24h",
    }

    patch_spec(kubectl, namespace, WEBHOOKS, "billing-sync", {"description": "Sync users into billing"})
    live = read(kubectl, namespace, WEBHOOKS, "billing-sync")
    assert live["metadata"]["generation"] == 2
    result = run_health(WEBHOOK_LUA, live)
    assert result["status"] == "Progressing"
    assert "generation 2" in result["message"]


def test_webhook_not_ready_is_degraded_with_the_operators_message(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_manifest("insecure"))
    not_ready = condition("Ready", "False", "MissingSecret", "Secret billing-token not found in shop", 1)
    patch_status(kubectl, namespace, WEBHOOKS, "insecure", {"observedGeneration": 1, "conditions": [not_ready]})
    assert webhook_health(kubectl, namespace, "insecure") == {
        "status": "Degraded",
        "message": "MissingSecret: Secret billing-token not found in shop",
    }


def test_webhook_with_failing_deliveries_is_degraded(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_manifest("flaky"))
    ready = condition("Ready", "True", "Reconciled", "Webhook is ready", 1)
    critical = condition("Healthy", "False", "SuccessRateLow", "41.00% of 100 requests in 24h", 1)
    patch_status(kubectl, namespace, WEBHOOKS, "flaky", {"observedGeneration": 1, "conditions": [ready, critical]})
    assert webhook_health(kubectl, namespace, "flaky") == {
        "status": "Degraded",
        "message": "SuccessRateLow: 41.00% of 100 requests in 24h",
    }


def test_disabled_webhook_is_suspended(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_manifest("paused"))
    ready = condition("Ready", "True", "Reconciled", "Webhook is ready", 1)
    patch_status(kubectl, namespace, WEBHOOKS, "paused", {"observedGeneration": 1, "conditions": [ready]})
    patch_spec(kubectl, namespace, WEBHOOKS, "paused", {"enabled": False})
    assert webhook_health(kubectl, namespace, "paused")["status"] == "Suspended"


def event_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "webhook-operator.io/v1alpha1",
        "kind": "WebhookEvent",
        "metadata": {"name": name},
        "spec": {"event": "User.Created", "data": {"id": "u_123", "email": "a@b.c"}},
    }


def delivery(webhook: str, outcome: str, error: str = "", code: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "webhook": webhook,
        "id": f"msg_{webhook.replace('-', '')}",
        "outcome": outcome,
        "attempts": 4 if outcome == "Failed" else 1,
        "firstAttemptTime": NOW,
        "lastAttemptTime": NOW,
        "durationMs": 35,
        "error": error,
    }
    if code is not None:
        entry["statusCode"] = code
    return entry


def event_health(kubectl: KubectlFn, namespace: str, name: str) -> dict[str, str]:
    return run_health(WEBHOOKEVENT_LUA, read(kubectl, namespace, EVENTS, name))


def test_event_health_follows_its_phase_on_the_live_object(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, event_manifest("user-created"))
    assert event_health(kubectl, namespace, "user-created")["status"] == "Progressing"

    in_flight = {"phase": "Delivering", "deliveries": [delivery("billing-sync", "Retrying", "HTTP 503", 503)]}
    patch_status(kubectl, namespace, EVENTS, "user-created", in_flight)
    assert event_health(kubectl, namespace, "user-created") == {
        "status": "Progressing",
        "message": "Delivering: 1 subscribed webhook(s)",
    }

    done = {
        "phase": "Delivered",
        "completionTime": NOW,
        "deliveries": [delivery("billing-sync", "Succeeded", code=200), delivery("crm", "Succeeded", code=204)],
    }
    patch_status(kubectl, namespace, EVENTS, "user-created", done)
    assert event_health(kubectl, namespace, "user-created") == {
        "status": "Healthy",
        "message": "Delivered to 2 webhook(s)",
    }


def test_partially_failed_event_is_degraded_and_names_the_failed_webhook(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, event_manifest("org-updated"))
    status = {
        "phase": "PartiallyFailed",
        "completionTime": NOW,
        "deliveries": [delivery("billing-sync", "Succeeded", code=200), delivery("crm", "Failed", "HTTP 503", 503)],
    }
    patch_status(kubectl, namespace, EVENTS, "org-updated", status)
    assert event_health(kubectl, namespace, "org-updated") == {
        "status": "Degraded",
        "message": "PartiallyFailed: 1 of 2 deliveries failed: crm (HTTP 503)",
    }


def test_event_without_subscribers_is_healthy(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, event_manifest("nobody-listens"))
    patch_status(kubectl, namespace, EVENTS, "nobody-listens", {"phase": "NoSubscribers", "completionTime": NOW})
    assert event_health(kubectl, namespace, "nobody-listens")["status"] == "Healthy"
