"""Retries and failures against real HTTPS receivers: what is retried, how long it waits, what status says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    apply,
    condition,
    create,
    event_manifest,
    get,
    metric_value,
    send_event,
    signing_keys,
    verify_received,
    verify_signatures,
    wait_event_final,
    wait_for_condition,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.operator_process import OperatorProcess, free_port
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def every_request_is_signed(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Iterator[None]:
    """Whatever a test checks, every request its receiver got must verify as a receiver verifies it."""
    yield
    verify_received(kubectl, namespace, receiver.received())


def retry(max_retries: int = 3, backoff: float = 0.1, max_backoff: float = 1, timeout: int = 5) -> dict[str, Any]:
    """spec.retry with short waits, so a test sees every attempt in well under a second."""
    return {
        "maxRetries": max_retries,
        "backoffSeconds": backoff,
        "maxBackoffSeconds": max_backoff,
        "timeoutSeconds": timeout,
    }


def add_webhook(kubectl: KubectlFn, namespace: str, name: str, url: str, **spec: Any) -> None:
    apply(kubectl, namespace, webhook_manifest(name, url, ["User.Created"], **spec))
    wait_ready(kubectl, namespace, name)


def only_entry(event: Manifest) -> dict[str, Any]:
    (entry,) = event["status"]["deliveries"]
    return dict(entry)


def attempts_metric(operator: OperatorProcess, namespace: str, webhook: str, code: str) -> float | None:
    return metric_value(
        operator.metrics(), "webhook_operator_delivery_attempts_total", namespace=namespace, webhook=webhook, code=code
    )


def deliveries_metric(operator: OperatorProcess, namespace: str, webhook: str, outcome: str) -> float | None:
    return metric_value(
        operator.metrics(), "webhook_operator_deliveries_total", namespace=namespace, webhook=webhook, outcome=outcome
    )


def test_503_twice_then_200_is_one_entry_with_three_attempts(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(503), Reply(503), Reply(200, b"thanks"))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry())
    key, standard_secret = signing_keys(kubectl, namespace, "hook")

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Delivered"
    entry = only_entry(event)
    assert entry["outcome"] == "Succeeded" and entry["attempts"] == 3
    assert entry["statusCode"] == 200 and entry["error"] == "" and entry["responseBody"] == "thanks"
    assert "nextAttemptTime" not in entry
    requests = receiver.received("/hook")
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {entry["id"]}
    assert len({r.body for r in requests}) == 1  # retries resend the same bytes
    for request in requests:
        verify_signatures(request.body, request.headers, key, standard_secret)
    assert attempts_metric(operator, namespace, "hook", "5xx") == 2
    assert attempts_metric(operator, namespace, "hook", "2xx") == 1
    assert deliveries_metric(operator, namespace, "hook", "success") == 1
    assert deliveries_metric(operator, namespace, "hook", "failure") is None


def test_always_500_with_max_retries_2_fails_after_three_attempts(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(500, b"upstream down"))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry(max_retries=2))

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Failed"
    assert event["status"]["delivered"] == "0/1"
    entry = only_entry(event)
    assert entry["outcome"] == "Failed" and entry["attempts"] == 3
    assert entry["statusCode"] == 500 and entry["error"] == "HTTP 500"
    assert entry["responseBody"] == "upstream down"
    assert len(receiver.received("/hook")) == 3
    assert attempts_metric(operator, namespace, "hook", "5xx") == 3
    assert deliveries_metric(operator, namespace, "hook", "failure") == 1
    assert deliveries_metric(operator, namespace, "hook", "success") is None


def test_400_is_not_retried(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(400, b"bad payload"), Reply(200))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry())

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Failed"
    entry = only_entry(event)
    assert entry["outcome"] == "Failed" and entry["attempts"] == 1
    assert entry["statusCode"] == 400 and entry["error"] == "HTTP 400"
    assert len(receiver.received("/hook")) == 1
    assert attempts_metric(operator, namespace, "hook", "4xx") == 1


def test_429_with_retry_after_waits_that_long_then_succeeds(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/hook", Reply(429, b"slow down", {"Retry-After": "1"}), Reply(200))
    # Without Retry-After the backoff would be at most 0.1 s.
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry(backoff=0.1, max_backoff=5))

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Delivered"
    assert only_entry(event)["attempts"] == 2
    first, second = receiver.received("/hook")
    waited = second.at - first.at
    print(f"\nretry after 429 with Retry-After: 1 came {waited * 1000:.0f} ms after the first attempt")
    assert 0.95 <= waited < 3.0


def test_timeout_is_reported_and_retried(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(200, delay_s=2.5))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry(max_retries=1, timeout=1))

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Failed"
    entry = only_entry(event)
    assert entry["attempts"] == 2
    assert "timeout" in entry["error"]
    assert "statusCode" not in entry
    assert 900 <= entry["durationMs"] < 2500
    assert len(receiver.received("/hook")) == 2
    assert attempts_metric(operator, namespace, "hook", "timeout") == 2


def test_a_timed_out_attempt_is_retried_and_can_succeed(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/hook", Reply(200, delay_s=2.5), Reply(200))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry(timeout=1))

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Delivered"
    entry = only_entry(event)
    assert entry["attempts"] == 2 and entry["outcome"] == "Succeeded" and entry["error"] == ""


def test_connection_refused_is_retried_then_fails(
    kubectl: KubectlFn, namespace: str, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    closed = f"https://127.0.0.1:{free_port()}/hook"
    add_webhook(kubectl, namespace, "hook", closed, retry=retry(max_retries=2))

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Failed"
    entry = only_entry(event)
    assert entry["attempts"] == 3
    assert entry["error"] == "connection refused"
    assert "statusCode" not in entry
    assert attempts_metric(operator, namespace, "hook", "error") == 3


def test_redirect_is_not_followed_and_fails(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(302, b"moved", {"Location": receiver.url("/target")}))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry())

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Failed"
    entry = only_entry(event)
    assert entry["attempts"] == 1 and entry["statusCode"] == 302
    assert "redirect" in entry["error"]
    assert len(receiver.received("/hook")) == 1
    assert receiver.received("/target") == []
    assert attempts_metric(operator, namespace, "hook", "3xx") == 1


def test_blocked_destination_makes_the_webhook_not_ready_and_gets_nothing(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    # Without --allow-cidr 127.0.0.0/8, the receiver's loopback address is a blocked destination.
    operator = start_operator(namespace, allow_loopback=False)
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), ["User.Created"]))
    hook = wait_for_condition(kubectl, namespace, "webhook/hook", "Ready", "False", reason="BlockedDestination")

    event = send_event(kubectl, namespace, "User.Created")

    ready = condition(hook, "Ready")
    assert ready is not None
    assert "blocked destination" in ready["message"] and "--allow-cidr 127.0.0.1/32" in ready["message"]
    assert event["status"]["phase"] == "NoSubscribers"
    assert receiver.received() == []
    assert metric_value(operator.metrics(), "webhook_operator_webhook_ready", namespace=namespace, webhook="hook") == 0


def test_one_of_two_webhooks_failing_is_partially_failed(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/bad", Reply(500))
    add_webhook(kubectl, namespace, "bad", receiver.url("/bad"), retry=retry(max_retries=1))
    add_webhook(kubectl, namespace, "good", receiver.url("/good"), retry=retry(max_retries=1))

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "PartiallyFailed"
    assert event["status"]["delivered"] == "1/2"
    outcomes = {d["webhook"]: (d["outcome"], d["attempts"]) for d in event["status"]["deliveries"]}
    assert outcomes == {"bad": ("Failed", 2), "good": ("Succeeded", 1)}
    row = kubectl("get", "-n", namespace, "webhookevent", event["metadata"]["name"], "--no-headers").stdout.split()
    assert row[1:4] == ["User.Created", "PartiallyFailed", "1/2"]


def test_response_body_keeps_the_first_kib(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    long_body = bytes(ord("a") + i % 26 for i in range(5000))
    receiver.script("/hook", Reply(200, long_body))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"))

    event = send_event(kubectl, namespace, "User.Created")

    assert only_entry(event)["responseBody"] == long_body[:1024].decode()


def test_retrying_status_is_written_between_attempts(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/hook", Reply(503, b"busy"), Reply(200))
    add_webhook(kubectl, namespace, "hook", receiver.url("/hook"), retry=retry(backoff=3, max_backoff=3))

    event = send_event_and_watch_retrying(kubectl, namespace, receiver)

    assert event["status"]["phase"] == "Delivered"
    assert only_entry(event)["attempts"] == 2


def send_event_and_watch_retrying(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Manifest:
    """Create an event, check its status between the two attempts, then wait for the final phase."""
    name = create(kubectl, namespace, event_manifest("User.Created"))

    def retrying() -> Manifest | None:
        obj = get(kubectl, namespace, f"webhookevent/{name}")
        entries = (obj.get("status") or {}).get("deliveries") or []
        return obj if entries and entries[0].get("outcome") == "Retrying" else None

    between = wait_until(retrying, what="the delivery to be recorded as Retrying")
    assert between["status"]["phase"] == "Delivering"
    entry = only_entry(between)
    assert entry["attempts"] == 1 and entry["statusCode"] == 503 and entry["error"] == "HTTP 503"
    assert entry["nextAttemptTime"] > entry["lastAttemptTime"]
    assert len(receiver.received("/hook")) == 1
    return wait_event_final(kubectl, namespace, name)
