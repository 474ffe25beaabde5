"""Annotation-triggered actions on the real control plane: test payloads on a Webhook, redelivery of an event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    annotate,
    apply,
    create,
    event_manifest,
    get,
    merge_patch,
    metric_value,
    send_event,
    signing_keys,
    verify_received,
    verify_signatures,
    wait_event_final,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Received, Receiver, Reply

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def every_request_is_signed(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Iterator[None]:
    """Whatever a test checks, every request its receiver got must verify as a receiver verifies it."""
    yield
    verify_received(kubectl, namespace, receiver.received())


TEST_ANNOTATION = "webhook-operator.io/test-requested-at"
REDELIVER_ANNOTATION = "webhook-operator.io/redeliver-requested-at"
FAST = {"maxRetries": 0, "backoffSeconds": 0.1, "maxBackoffSeconds": 1, "timeoutSeconds": 5}


def add_webhook(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, name: str, events: list[str], **retry: float
) -> None:
    apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), events, retry={**FAST, **retry}))
    wait_ready(kubectl, namespace, name)


def is_test(request: Received) -> bool:
    return bool(json.loads(request.body).get("test"))


def wait_last_test(kubectl: KubectlFn, namespace: str, name: str, value: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        last = (get(kubectl, namespace, f"webhook/{name}").get("status") or {}).get("lastTest") or {}
        return dict(last) if last.get("requestedAt") == value else None

    return wait_until(probe, what=f"status.lastTest for {value}")


def kube_events(kubectl: KubectlFn, namespace: str, name: str, reason: str) -> list[Manifest]:
    selector = f"involvedObject.name={name},reason={reason}"
    items = json.loads(kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json").stdout)
    return list(items["items"])


def entries_by_webhook(event: Manifest) -> dict[str, dict[str, Any]]:
    return {d["webhook"]: dict(d) for d in event["status"]["deliveries"]}


# -- test payloads ----------------------------------------------------------------------------
def test_test_payload_sends_one_signed_request_per_event_entry(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created", "Organization.*", "*"])
    key, standard_secret = signing_keys(kubectl, namespace, "hook")

    annotate(kubectl, namespace, "webhook/hook", TEST_ANNOTATION, "2026-11-28T03:00:00Z")

    requests = receiver.wait_for(3, "/hook")
    bodies = [json.loads(r.body) for r in requests]
    assert sorted(b["event"] for b in bodies) == ["Organization.Test", "User.Created", "Webhook.Test"]
    for request, body in zip(requests, bodies, strict=True):
        verify_signatures(request.body, request.headers, key, standard_secret)
        assert list(body) == ["hookId", "event", "createdAt", "eventId", "data", "test"]
        assert request.body.endswith(b',"test":true}')
        assert body["hookId"] == f"{namespace}/hook" and body["data"] is not None
    assert len({r.headers["webhook-id"] for r in requests}) == 3

    last = wait_last_test(kubectl, namespace, "hook", "2026-11-28T03:00:00Z")
    assert last["completedAt"]
    assert [(r["event"], r["statusCode"]) for r in last["results"]] == [
        ("User.Created", 200),
        ("Organization.Test", 200),
        ("Webhook.Test", 200),
    ]
    assert all(isinstance(r["durationMs"], int) and r["durationMs"] >= 0 for r in last["results"])
    (sent,) = wait_until(lambda: kube_events(kubectl, namespace, "hook", "TestPayloadSent"), what="a Kubernetes Event")
    assert sent["type"] == "Normal"
    assert sent["involvedObject"]["kind"] == "Webhook" and sent["involvedObject"]["namespace"] == namespace
    assert len(receiver.received("/hook")) == 3  # sent once each, never retried


def test_test_payloads_count_in_no_health_metric_or_request_log(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created", "User.Deleted"])
    annotate(kubectl, namespace, "webhook/hook", TEST_ANNOTATION, "t1")
    wait_last_test(kubectl, namespace, "hook", "t1")

    # One real delivery, so there is a figure that would be off by the two test payloads.
    send_event(kubectl, namespace, "User.Created")

    def health_written() -> dict[str, Any] | None:
        health = (get(kubectl, namespace, "webhook/hook").get("status") or {}).get("health") or {}
        return dict(health) if health.get("requests") else None

    health = wait_until(health_written, what="health to count the real delivery")
    assert (health["requests"], health["succeeded"]) == (1, 1)
    metrics = operator.metrics()
    labels = {"namespace": namespace, "webhook": "hook"}
    assert metric_value(metrics, "webhook_operator_deliveries_total", **labels, outcome="success") == 1
    assert metric_value(metrics, "webhook_operator_delivery_attempts_total", **labels, code="2xx") == 1
    assert metric_value(metrics, "webhook_operator_webhook_requests_24h", **labels) == 1
    logged = json.loads(kubectl("get", "webhookevents", "-n", namespace, "-o", "json").stdout)["items"]
    assert [e["spec"]["event"] for e in logged] == ["User.Created"]
    assert len(receiver.received("/hook")) == 3


def test_same_test_request_value_sends_nothing_again_even_after_a_restart(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    annotate(kubectl, namespace, "webhook/hook", TEST_ANNOTATION, "t1")
    wait_last_test(kubectl, namespace, "hook", "t1")

    # A spec change is reconciled with the annotation unchanged; so is every webhook at startup.
    merge_patch(kubectl, namespace, "webhook/hook", {"spec": {"description": "changed"}})
    wait_ready(kubectl, namespace, "hook")
    operator.stop()
    operator.start()
    send_event(kubectl, namespace, "User.Created")
    assert len([r for r in receiver.received("/hook") if is_test(r)]) == 1

    annotate(kubectl, namespace, "webhook/hook", TEST_ANNOTATION, "t2")
    receiver.wait_for(2, "/hook", where=is_test)
    wait_last_test(kubectl, namespace, "hook", "t2")


def test_failing_test_payload_is_reported_as_a_warning(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/hook", Reply(503, b"maintenance"))
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"], maxRetries=3)

    annotate(kubectl, namespace, "webhook/hook", TEST_ANNOTATION, "t1")

    last = wait_last_test(kubectl, namespace, "hook", "t1")
    assert [(r["event"], r["statusCode"]) for r in last["results"]] == [("User.Created", 503)]
    (failed,) = wait_until(lambda: kube_events(kubectl, namespace, "hook", "TestPayloadFailed"), what="a Warning")
    assert failed["type"] == "Warning" and "503" in failed["message"]
    assert len(receiver.received("/hook")) == 1  # test payloads are not retried


# -- redelivery -------------------------------------------------------------------------------
def test_redelivery_resends_failed_deliveries_with_the_same_id_and_fresh_attempts(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/bad", Reply(500, b"broken"))
    add_webhook(kubectl, namespace, receiver, "bad", ["User.Created"], maxRetries=1)
    add_webhook(kubectl, namespace, receiver, "good", ["User.Created"])
    key, standard_secret = signing_keys(kubectl, namespace, "bad")
    first = send_event(kubectl, namespace, "User.Created", {"id": "u1"})
    name = first["metadata"]["name"]
    before = entries_by_webhook(first)
    assert first["status"]["phase"] == "PartiallyFailed"
    assert (before["bad"]["outcome"], before["bad"]["attempts"]) == ("Failed", 2)

    receiver.script("/bad", Reply(200, b"fixed"))
    annotate(kubectl, namespace, f"webhookevent/{name}", REDELIVER_ANNOTATION, "r1")

    def redelivered() -> Manifest | None:
        obj = get(kubectl, namespace, f"webhookevent/{name}")
        status = obj.get("status") or {}
        done = (status.get("redelivery") or {}).get("requestedAt") == "r1" and status.get("phase") == "Delivered"
        return obj if done else None

    event = wait_until(redelivered, what="the redelivery to complete")
    after = entries_by_webhook(event)
    assert after["bad"]["id"] == before["bad"]["id"]
    assert (after["bad"]["outcome"], after["bad"]["attempts"], after["bad"]["statusCode"]) == ("Succeeded", 1, 200)
    assert after["bad"]["error"] == "" and after["bad"]["responseBody"] == "fixed"
    assert after["good"] == before["good"], "a delivery that had succeeded was touched"
    assert event["status"]["delivered"] == "2/2"
    assert event["status"]["redelivery"]["startedAt"]
    bad_requests = receiver.received("/bad")
    assert len(bad_requests) == 3
    assert {r.headers["webhook-id"] for r in bad_requests} == {before["bad"]["id"]}
    assert len({r.body for r in bad_requests}) == 1
    for request in bad_requests:
        verify_signatures(request.body, request.headers, key, standard_secret)
    assert len(receiver.received("/good")) == 1


def test_same_redelivery_value_sends_nothing_again_even_after_a_restart(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(500))
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    name = send_event(kubectl, namespace, "User.Created")["metadata"]["name"]

    annotate(kubectl, namespace, f"webhookevent/{name}", REDELIVER_ANNOTATION, "r1")

    def redelivery_handled(value: str) -> Manifest | None:
        obj = wait_event_final(kubectl, namespace, name)
        return obj if (obj["status"].get("redelivery") or {}).get("requestedAt") == value else None

    event = wait_until(lambda: redelivery_handled("r1"), what="redelivery r1")
    assert event["status"]["phase"] == "Failed"
    assert event["status"]["deliveries"][0]["attempts"] == 1  # started over, failed again
    assert len(receiver.received("/hook")) == 2

    # Another change to the event, and a restart, both with the annotation still at r1.
    annotate(kubectl, namespace, f"webhookevent/{name}", "example.com/touched", "yes")
    operator.stop()
    operator.start()
    send_event(kubectl, namespace, "Other.Event")  # handled after the event above was listed again
    assert len(receiver.received("/hook")) == 2

    annotate(kubectl, namespace, f"webhookevent/{name}", REDELIVER_ANNOTATION, "r2")
    receiver.wait_for(3, "/hook")
    wait_until(lambda: redelivery_handled("r2"), what="redelivery r2")


def test_a_redelivery_requested_while_the_delivery_still_runs_is_honoured(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    """The request lands between retries; the event ends Failed, then the redelivery runs (not dropped
    because the object then carries the resourceVersion of the operator's own last write)."""
    start_operator(namespace)
    receiver.script("/hook", Reply(500), Reply(500), Reply(500), Reply(200, b"fixed"))
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"], maxRetries=2, backoffSeconds=1)
    name = create(kubectl, namespace, event_manifest("User.Created"))
    receiver.wait_for(1, "/hook", timeout=15)
    assert get(kubectl, namespace, f"webhookevent/{name}").get("status", {}).get("phase") != "Failed"
    annotate(kubectl, namespace, f"webhookevent/{name}", REDELIVER_ANNOTATION, "r1")

    def redelivered() -> Manifest | None:
        obj = get(kubectl, namespace, f"webhookevent/{name}")
        status = obj.get("status") or {}
        done = (status.get("redelivery") or {}).get("requestedAt") == "r1" and status.get("phase") == "Delivered"
        return obj if done else None

    event = wait_until(redelivered, what="the redelivery requested mid-delivery", timeout=30)
    assert event["status"]["deliveries"][0]["attempts"] == 1
    assert len(receiver.received("/hook")) == 4


def test_kubernetes_events_name_the_pod(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "webhook-operator-7d9f8-x2k4q")
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    annotate(kubectl, namespace, "webhook/hook", TEST_ANNOTATION, "2026-11-28T03:00:00Z")
    (sent,) = wait_until(lambda: kube_events(kubectl, namespace, "hook", "TestPayloadSent"), what="a Kubernetes Event")
    assert sent["reportingComponent"] == "webhook-operator"
    assert sent["reportingInstance"] == "webhook-operator-7d9f8-x2k4q"
    assert sent["source"] == {"component": "webhook-operator", "host": "webhook-operator-7d9f8-x2k4q"}
