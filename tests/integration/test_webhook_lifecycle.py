"""Webhook reconciliation on a real control plane with the operator running: keys, status, actions, health."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    annotate,
    apply,
    condition,
    create,
    delete,
    event_manifest,
    get,
    get_or_none,
    merge_patch,
    metric_samples,
    metric_value,
    secret_data,
    secret_manifest,
    send_event,
    series_with_labels,
    wait_event_final,
    wait_for_condition,
    wait_for_object,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Received, Receiver, Reply

pytestmark = pytest.mark.integration

ROTATE = "webhook-operator.io/rotate-key-requested-at"
TEST = "webhook-operator.io/test-requested-at"
MANAGED_BY = ("app.kubernetes.io/managed-by", "webhook-operator")
KEY_FORMAT = re.compile(r"[0-9A-Za-z]{32}")
NO_RETRIES = {"maxRetries": 0, "backoffSeconds": 0.1, "maxBackoffSeconds": 1, "timeoutSeconds": 5}


# -- helpers ----------------------------------------------------------------------------
def report(what: str, seconds: float) -> None:
    """Timings show with ``pytest -s``; they are what the README's latency figures come from."""
    print(f"\n[timing] {what}: {seconds:.2f}s")


def signing_key(kubectl: KubectlFn, namespace: str, webhook: str) -> str:
    return secret_data(get(kubectl, namespace, f"secret/{webhook}-signing-key"))["signingKey"]


def whsec(key: str) -> str:
    return "whsec_" + base64.b64encode(key.encode()).decode()


def logto_signature(key: str, body: bytes) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(key: str, request: Received) -> str:
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.body
    return "v1," + base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()


def verifies(key: str, request: Received) -> bool:
    """Whether the standardwebhooks library accepts the request with ``key``'s whsec_ form."""
    try:
        StandardWebhook(whsec(key)).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def deliver_one(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, data: Any = None, path: str = "/hook"
) -> tuple[Manifest, Received]:
    """Create a User.Created event, wait for its final phase, and return it with the request it caused."""
    event = send_event(kubectl, namespace, "User.Created", data)
    uid = event["metadata"]["uid"]
    [request] = receiver.wait_for(1, path, timeout=10, where=lambda r: json.loads(r.body)["eventId"] == uid)
    return event, request


def health(kubectl: KubectlFn, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(kubectl, namespace, f"webhook/{name}").get("status") or {}).get("health") or {})


def wait_health_requests(kubectl: KubectlFn, namespace: str, name: str, requests: int) -> dict[str, Any]:
    webhook = wait_for_object(
        kubectl,
        namespace,
        f"webhook/{name}",
        lambda w: ((w.get("status") or {}).get("health") or {}).get("requests") == requests,
        timeout=15,
        what=f"status.health.requests == {requests}",
    )
    return dict(webhook["status"]["health"])


def with_managed_fields(kubectl: KubectlFn, namespace: str, resource: str) -> Manifest:
    result = kubectl("get", "-n", namespace, resource, "-o", "json", "--show-managed-fields")
    return dict(json.loads(result.stdout))


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- creation and the signing-key Secret -----------------------------------------------
def test_new_webhook_becomes_ready_with_an_owned_signing_key_secret(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    started = time.monotonic()
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    webhook = wait_ready(kubectl, namespace, "billing", timeout=10)
    report("create -> Ready", time.monotonic() - started)

    secret = get(kubectl, namespace, "secret/billing-signing-key")
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"][MANAGED_BY[0]] == MANAGED_BY[1]
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "webhook-operator.io/v1alpha1",
            "kind": "Webhook",
            "name": "billing",
            "uid": webhook["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    data = secret_data(secret)
    assert KEY_FORMAT.fullmatch(data["signingKey"]), "signingKey must be 32 characters of [0-9A-Za-z]"
    assert data["standardWebhooksSecret"] == whsec(data["signingKey"])

    status = webhook["status"]
    generation = webhook["metadata"]["generation"]
    assert status["signingKeySecretName"] == "billing-signing-key"
    assert status["observedGeneration"] == generation
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Healthy"}
    assert all(c["observedGeneration"] == generation for c in status["conditions"])
    assert condition(webhook, "Ready")["reason"] == "Reconciled"  # type: ignore[index]
    healthy = condition(webhook, "Healthy")
    assert healthy is not None and (healthy["status"], healthy["reason"]) == ("Unknown", "NoRequests")

    # The standardWebhooksSecret as stored verifies a real delivery with the reference library.
    _, request = deliver_one(kubectl, namespace, receiver)
    StandardWebhook(data["standardWebhooksSecret"]).verify(request.body, request.headers)
    assert request.headers["logto-signature-sha-256"] == logto_signature(data["signingKey"], request.body)

    # The key is a secret: nowhere but in the Secret.
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    final = json.dumps(get(kubectl, namespace, "webhook/billing"))
    for place, text in [
        ("status", final),
        ("Events", events),
        ("logs", operator.log()),
        ("metrics", operator.metrics()),
    ]:
        assert data["signingKey"] not in text, f"the signing key leaked into {place}"


def test_operator_never_writes_spec_or_metadata_of_the_webhook(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), description="before the operator"))
    before = with_managed_fields(kubectl, namespace, "webhook/billing")

    operator = start_operator(namespace)
    wait_ready(kubectl, namespace, "billing")
    deliver_one(kubectl, namespace, receiver)
    wait_health_requests(kubectl, namespace, "billing", 1)
    operator.stop()  # a clean shutdown is where frameworks like to leave finalizers or progress marks
    operator.start()
    after = with_managed_fields(kubectl, namespace, "webhook/billing")

    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    for field in ("annotations", "labels", "finalizers"):
        assert after["metadata"].get(field) == before["metadata"].get(field), f"metadata.{field} changed"
    assert "finalizers" not in after["metadata"]
    assert not any("kopf" in key for key in (after["metadata"].get("annotations") or {}))

    def writers(obj: Manifest) -> set[tuple[str, str]]:
        return {
            (m["manager"], m["operation"])
            for m in obj["metadata"].get("managedFields") or ()
            if m.get("subresource") != "status"
        }

    assert writers(after) == writers(before), "only the status subresource may gain writers"
    status_writers = {m["manager"] for m in after["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert status_writers, "the operator writes status through the status subresource"


def test_changing_events_or_headers_moves_observed_generation(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    assert wait_ready(kubectl, namespace, "billing")["status"]["observedGeneration"] == 1

    started = time.monotonic()
    merge_patch(kubectl, namespace, "webhook/billing", {"spec": {"events": ["User.*", "Organization.Created"]}})
    webhook = wait_ready(kubectl, namespace, "billing")
    report("spec change -> observedGeneration", time.monotonic() - started)
    assert webhook["metadata"]["generation"] == 2
    assert webhook["status"]["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in webhook["status"]["conditions"])
    assert "2 event pattern(s)" in condition(webhook, "Ready")["message"]  # type: ignore[index]

    merge_patch(kubectl, namespace, "webhook/billing", {"spec": {"headers": [{"name": "X-Team", "value": "billing"}]}})
    webhook = wait_ready(kubectl, namespace, "billing")
    assert webhook["metadata"]["generation"] == 3
    assert webhook["status"]["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in webhook["status"]["conditions"])

    # Both changes are in effect: a newly subscribed event arrives with the new header.
    event = send_event(kubectl, namespace, "User.Data.Updated", {"id": "u1"})
    assert event["status"]["phase"] == "Delivered"
    [request] = receiver.wait_for(1, "/hook")
    assert request.headers["x-team"] == "billing"


# -- enable / disable -------------------------------------------------------------------
def test_disabled_webhook_stays_ready_reports_disabled_and_gets_nothing(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    wait_ready(kubectl, namespace, "billing")

    def enabled_gauge() -> float | None:
        return metric_value(
            operator.metrics(), "webhook_operator_webhook_enabled", namespace=namespace, webhook="billing"
        )

    assert enabled_gauge() == 1

    merge_patch(kubectl, namespace, "webhook/billing", {"spec": {"enabled": False}})
    webhook = wait_ready(kubectl, namespace, "billing")
    assert "disabled" in condition(webhook, "Ready")["message"]  # type: ignore[index]
    wait_until(lambda: enabled_gauge() == 0, timeout=5, what="webhook_enabled 0")
    while_disabled = send_event(kubectl, namespace, "User.Created", {"id": "while-disabled"})
    assert while_disabled["status"]["phase"] == "NoSubscribers"

    merge_patch(kubectl, namespace, "webhook/billing", {"spec": {"enabled": True}})
    webhook = wait_ready(kubectl, namespace, "billing")
    assert "disabled" not in condition(webhook, "Ready")["message"]  # type: ignore[index]
    wait_until(lambda: enabled_gauge() == 1, timeout=5, what="webhook_enabled 1")
    after, _ = deliver_one(kubectl, namespace, receiver, {"id": "after"})
    assert after["status"]["phase"] == "Delivered"
    # Events that happened while disabled are not sent later.
    assert [json.loads(r.body)["data"] for r in receiver.received()] == [{"id": "after"}]


# -- deletion ---------------------------------------------------------------------------
def test_deleting_webhook_garbage_collects_its_secret_and_removes_its_metric_series(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    apply(kubectl, namespace, webhook_manifest("other", receiver.url("/other")))
    wait_ready(kubectl, namespace, "billing")
    wait_ready(kubectl, namespace, "other")
    send_event(kubectl, namespace, "User.Created")
    wait_health_requests(kubectl, namespace, "billing", 1)
    series = series_with_labels(operator.metrics(), namespace=namespace, webhook="billing")
    assert "webhook_operator_deliveries_total" in series
    assert "webhook_operator_webhook_requests_24h" in series

    started = time.monotonic()
    delete(kubectl, namespace, "webhook/billing", wait=False)
    wait_until(
        lambda: get_or_none(kubectl, namespace, "secret/billing-signing-key") is None,
        timeout=60,
        what="kube-controller-manager to garbage-collect billing-signing-key",
    )
    report("delete Webhook -> Secret garbage-collected", time.monotonic() - started)
    wait_until(
        lambda: not series_with_labels(operator.metrics(), namespace=namespace, webhook="billing"),
        timeout=10,
        what="the deleted webhook's metric series to disappear",
    )
    assert get_or_none(kubectl, namespace, "secret/other-signing-key") is not None
    assert "webhook_operator_deliveries_total" in series_with_labels(
        operator.metrics(), namespace=namespace, webhook="other"
    )


def test_deleted_signing_key_secret_is_regenerated_with_a_new_key(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    wait_ready(kubectl, namespace, "billing")
    old = get(kubectl, namespace, "secret/billing-signing-key")

    started = time.monotonic()
    delete(kubectl, namespace, "secret/billing-signing-key")
    new = wait_until(
        lambda: (
            (s := get_or_none(kubectl, namespace, "secret/billing-signing-key"))
            and s["metadata"]["uid"] != old["metadata"]["uid"]
            and s
        ),
        timeout=15,
        what="a new billing-signing-key Secret",
    )
    report("delete Secret -> new key", time.monotonic() - started)
    key = secret_data(new)["signingKey"]
    assert KEY_FORMAT.fullmatch(key)
    assert key != secret_data(old)["signingKey"]
    assert secret_data(new)["standardWebhooksSecret"] == whsec(key)

    _, request = deliver_one(kubectl, namespace, receiver)
    assert request.headers["logto-signature-sha-256"] == logto_signature(key, request.body)
    assert request.headers["webhook-signature"] == standard_signature(key, request)


def test_foreign_secret_with_the_signing_key_name_is_a_conflict_and_stays_untouched(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    apply(kubectl, namespace, secret_manifest("billing-signing-key", {"signingKey": "someone-elses-key"}))
    foreign = get(kubectl, namespace, "secret/billing-signing-key")
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))

    webhook = wait_for_condition(
        kubectl, namespace, "webhook/billing", "Ready", "False", reason="SigningKeySecretConflict"
    )
    message = condition(webhook, "Ready")["message"]  # type: ignore[index]
    assert "not owned by this Webhook" in message
    assert "Delete or rename" in message and "signingKeySecretRef" in message
    event = send_event(kubectl, namespace, "User.Created")
    assert event["status"]["phase"] == "NoSubscribers"
    assert receiver.received() == []

    after = get(kubectl, namespace, "secret/billing-signing-key")
    assert after["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
    assert after["data"] == foreign["data"]
    assert "ownerReferences" not in after["metadata"]

    # Doing what the message says fixes it.
    delete(kubectl, namespace, "secret/billing-signing-key")
    wait_ready(kubectl, namespace, "billing", timeout=15)
    assert signing_key(kubectl, namespace, "billing") != "someone-elses-key"


# -- header Secrets ---------------------------------------------------------------------
def test_header_secret_created_later_makes_webhook_ready_and_its_value_is_sent(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    headers = [
        {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "billing-token", "key": "token"}}},
        {"name": "X-Team", "value": "billing"},
    ]
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), headers=headers))
    webhook = wait_for_condition(kubectl, namespace, "webhook/billing", "Ready", "False", reason="HeaderSecretMissing")
    message = condition(webhook, "Ready")["message"]  # type: ignore[index]
    assert "spec.headers[0]" in message and f"{namespace}/billing-token" in message
    assert "create it with key 'token'" in message

    pid = operator.proc.pid if operator.proc else None
    started = time.monotonic()
    apply(kubectl, namespace, secret_manifest("billing-token", {"token": "Bearer s3cr3t"}))
    wait_ready(kubectl, namespace, "billing", timeout=15)
    report("header Secret created -> Ready", time.monotonic() - started)
    assert operator.running and operator.proc is not None and operator.proc.pid == pid

    _, request = deliver_one(kubectl, namespace, receiver)
    assert request.headers["authorization"] == "Bearer s3cr3t"
    assert request.headers["x-team"] == "billing"
    assert "s3cr3t" not in json.dumps(get(kubectl, namespace, "webhook/billing"))
    assert "s3cr3t" not in operator.log()


# -- bring your own key -----------------------------------------------------------------
def test_signing_key_secret_ref_is_only_read_and_signs_deliveries(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    own_key = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
    apply(kubectl, namespace, secret_manifest("my-key", {"signingKey": own_key}))
    mine = get(kubectl, namespace, "secret/my-key")
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), signingKeySecretRef={"name": "my-key"}))
    webhook = wait_ready(kubectl, namespace, "billing")
    assert webhook["status"]["signingKeySecretName"] == "my-key"

    _, request = deliver_one(kubectl, namespace, receiver)
    assert request.headers["logto-signature-sha-256"] == logto_signature(own_key, request.body)
    assert request.headers["webhook-signature"] == standard_signature(own_key, request)
    assert verifies(own_key, request)

    assert get_or_none(kubectl, namespace, "secret/billing-signing-key") is None
    managed = kubectl("get", "secrets", "-n", namespace, "-l", "=".join(MANAGED_BY), "-o", "name").stdout
    assert managed.strip() == "", "the operator must not create a Secret when the user brings the key"
    after = get(kubectl, namespace, "secret/my-key")
    assert after["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
    assert after["data"] == mine["data"]


def test_missing_signing_key_secret_ref_is_not_ready_until_it_exists(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), signingKeySecretRef={"name": "my-key"}))
    webhook = wait_for_condition(
        kubectl, namespace, "webhook/billing", "Ready", "False", reason="SigningKeySecretMissing"
    )
    message = condition(webhook, "Ready")["message"]  # type: ignore[index]
    assert f"{namespace}/my-key" in message and "does not exist" in message
    assert get_or_none(kubectl, namespace, "secret/billing-signing-key") is None

    apply(kubectl, namespace, secret_manifest("my-key", {"signingKey": "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"}))
    wait_ready(kubectl, namespace, "billing", timeout=15)


# -- key rotation -----------------------------------------------------------------------
OVERLAP_S = 3


def test_rotation_signs_with_both_keys_during_the_overlap_then_only_with_the_new_one(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--key-rotation-overlap", f"{OVERLAP_S}s")
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    wait_ready(kubectl, namespace, "billing")
    old = signing_key(kubectl, namespace, "billing")

    started = time.monotonic()
    annotate(kubectl, namespace, "webhook/billing", ROTATE, "2026-11-28T03:00:00Z")
    webhook = wait_for_object(
        kubectl,
        namespace,
        "webhook/billing",
        lambda w: "rotatedAt" in (w["status"].get("keyRotation") or {}),
        timeout=10,
        what="status.keyRotation.rotatedAt",
    )
    report("rotate annotation -> rotatedAt", time.monotonic() - started)
    rotation = webhook["status"]["keyRotation"]
    assert rotation["requestedAt"] == "2026-11-28T03:00:00Z"
    expires = parse_time(rotation["previousKeyExpiresAt"])
    assert expires - parse_time(rotation["rotatedAt"]) == dt.timedelta(seconds=OVERLAP_S)
    secret = secret_data(get(kubectl, namespace, "secret/billing-signing-key"))
    new = secret["signingKey"]
    assert KEY_FORMAT.fullmatch(new) and new != old
    assert secret["standardWebhooksSecret"] == whsec(new)
    assert old in secret.values(), "the previous key stays in the Secret during the overlap"

    _, during = deliver_one(kubectl, namespace, receiver, {"n": 1})
    report("rotation -> delivery received", time.monotonic() - started)
    assert int(during.headers["webhook-timestamp"]) < expires.timestamp() + 1, (
        "the delivery came after the overlap ended, so it cannot show overlap signing"
    )
    signatures = during.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert sorted(signatures) == sorted([standard_signature(new, during), standard_signature(old, during)])
    assert verifies(new, during) and verifies(old, during)
    assert during.headers["logto-signature-sha-256"] == logto_signature(new, during.body)

    wait_until(
        lambda: old not in secret_data(get(kubectl, namespace, "secret/billing-signing-key")).values(),
        timeout=OVERLAP_S + 10,
        what="the previous key to leave the Secret after the overlap",
    )
    report("rotation -> previous key removed", time.monotonic() - started)
    assert set(secret_data(get(kubectl, namespace, "secret/billing-signing-key"))) == {
        "signingKey",
        "standardWebhooksSecret",
    }
    _, after = deliver_one(kubectl, namespace, receiver, {"n": 2})
    assert after.headers["webhook-signature"] == standard_signature(new, after)
    assert verifies(new, after) and not verifies(old, after)


def test_same_rotation_request_is_handled_once_even_after_an_operator_restart(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    wait_ready(kubectl, namespace, "billing")
    original = signing_key(kubectl, namespace, "billing")

    def rotated_for(value: str) -> Manifest:
        return wait_for_object(
            kubectl,
            namespace,
            "webhook/billing",
            lambda w: (
                (w["status"].get("keyRotation") or {}).get("requestedAt") == value
                and "rotatedAt" in w["status"]["keyRotation"]
            ),
            timeout=10,
            what=f"rotation for {value}",
        )

    annotate(kubectl, namespace, "webhook/billing", ROTATE, "first")
    first_rotation = rotated_for("first")["status"]["keyRotation"]
    first_key = signing_key(kubectl, namespace, "billing")
    assert first_key != original

    # Reconciles caused by other changes, re-applying the same value, and a restart rotate nothing.
    merge_patch(kubectl, namespace, "webhook/billing", {"spec": {"description": "touched"}})
    wait_ready(kubectl, namespace, "billing")
    annotate(kubectl, namespace, "webhook/billing", ROTATE, "first")
    operator.stop()
    operator.start()
    wait_ready(kubectl, namespace, "billing")
    time.sleep(1)  # give a wrongly repeated rotation the time to show
    assert signing_key(kubectl, namespace, "billing") == first_key
    assert get(kubectl, namespace, "webhook/billing")["status"]["keyRotation"] == first_rotation

    # A new value does rotate, so the checks above could have failed.
    annotate(kubectl, namespace, "webhook/billing", ROTATE, "second")
    rotated_for("second")
    assert signing_key(kubectl, namespace, "billing") not in (first_key, original)


# -- kubectl wait -----------------------------------------------------------------------
def test_kubectl_wait_for_condition_ready_works(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    started = time.monotonic()
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url()))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=30s", "webhook/billing")
    report("create -> kubectl wait returned", time.monotonic() - started)

    apply(kubectl, namespace, webhook_manifest("plain", receiver.url().replace("https://", "http://")))
    waited = kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=3s", "webhook/plain", check=False)
    assert waited.returncode != 0, "a webhook that is not Ready must not satisfy kubectl wait"


# -- health -----------------------------------------------------------------------------
def create_events(kubectl: KubectlFn, namespace: str, count: int) -> list[str]:
    return [create(kubectl, namespace, event_manifest("User.Created", {"n": i})) for i in range(count)]


def printer_row(kubectl: KubectlFn, namespace: str, name: str) -> dict[str, str]:
    lines = kubectl("get", "webhooks", "-n", namespace, name).stdout.splitlines()
    header, row = lines[0].split(), lines[1].split()
    return dict(zip(header, row, strict=True))


def test_health_counts_successes_and_failures_in_status_printer_columns_and_metrics(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), retry=NO_RETRIES))
    wait_ready(kubectl, namespace, "billing")
    receiver.script("/hook", *[Reply(200)] * 9, Reply(400, b"bad request"))

    for name in create_events(kubectl, namespace, 9):
        wait_event_final(kubectl, namespace, name)
    # The tenth goes last on its own, so it is the one that sets lastStatusCode.
    [failed_name] = create_events(kubectl, namespace, 1)
    assert wait_event_final(kubectl, namespace, failed_name)["status"]["phase"] == "Failed"

    status_health = wait_health_requests(kubectl, namespace, "billing", 10)
    assert {k: v for k, v in status_health.items() if k not in ("buckets", "lastDeliveryTime")} == {
        "window": "24h",
        "requests": 10,
        "succeeded": 9,
        "failed": 1,
        "successRate": "90.00%",
        "state": "Warning",
        "lastStatusCode": 400,
    }
    assert parse_time(status_health["lastDeliveryTime"]) <= dt.datetime.now(dt.UTC)
    webhook = get(kubectl, namespace, "webhook/billing")
    healthy = condition(webhook, "Healthy")
    assert healthy is not None
    assert (healthy["status"], healthy["reason"]) == ("True", "SuccessRateDegraded")
    assert healthy["message"] == "90.00% of 10 requests in 24h"

    row = printer_row(kubectl, namespace, "billing")
    assert (row["HEALTH"], row["SUCCESS"], row["REQUESTS"], row["READY"], row["ENABLED"]) == (
        "Warning",
        "90.00%",
        "10",
        "True",
        "true",
    )
    assert row["URL"] == receiver.url()

    def gauges() -> tuple[float | None, float | None]:
        text = operator.metrics()
        labels = {"namespace": namespace, "webhook": "billing"}
        return (
            metric_value(text, "webhook_operator_webhook_success_ratio", **labels),
            metric_value(text, "webhook_operator_webhook_requests_24h", **labels),
        )

    assert wait_until(lambda: gauges() == (0.9, 10.0) and gauges(), timeout=5, what="gauges 0.9 and 10")
    outcomes = {
        labels["outcome"]: value
        for labels, value in metric_samples(operator.metrics(), "webhook_operator_deliveries_total")
        if labels["webhook"] == "billing"
    }
    assert outcomes == {"success": 9.0, "failure": 1.0}


def test_health_survives_an_operator_restart(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), retry=NO_RETRIES))
    wait_ready(kubectl, namespace, "billing")
    receiver.script("/hook", Reply(200), Reply(200), Reply(200), Reply(400))
    for name in create_events(kubectl, namespace, 4):
        wait_event_final(kubectl, namespace, name)
    before = wait_health_requests(kubectl, namespace, "billing", 4)
    assert (before["successRate"], before["state"]) == ("75.00%", "Critical")
    assert condition(get(kubectl, namespace, "webhook/billing"), "Healthy")["status"] == "False"  # type: ignore[index]

    operator.stop()
    started = time.monotonic()
    operator.start()
    report("operator restart -> delivering", time.monotonic() - started)
    labels = {"namespace": namespace, "webhook": "billing"}
    text = operator.metrics()
    assert metric_value(text, "webhook_operator_webhook_success_ratio", **labels) == 0.75
    assert metric_value(text, "webhook_operator_webhook_requests_24h", **labels) == 4
    time.sleep(1.5)  # several health flushes: none may reset or change the window
    assert health(kubectl, namespace, "billing") == before

    # And the restored window keeps counting.
    receiver.script("/hook", Reply(200))
    send_event(kubectl, namespace, "User.Created")
    after = wait_health_requests(kubectl, namespace, "billing", 5)
    assert (after["succeeded"], after["failed"], after["successRate"]) == (4, 1, "80.00%")


def test_test_payloads_are_not_counted_in_health_or_metrics(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("billing", receiver.url(), events=["User.Created", "Organization.*"]))
    wait_ready(kubectl, namespace, "billing")
    deliver_one(kubectl, namespace, receiver)
    wait_health_requests(kubectl, namespace, "billing", 1)

    annotate(kubectl, namespace, "webhook/billing", TEST, "t1")
    wait_for_object(
        kubectl,
        namespace,
        "webhook/billing",
        lambda w: (w["status"].get("lastTest") or {}).get("requestedAt") == "t1",
        timeout=15,
        what="status.lastTest for t1",
    )
    tests = [json.loads(r.body) for r in receiver.received() if json.loads(r.body).get("test") is True]
    assert sorted(t["event"] for t in tests) == ["Organization.Test", "User.Created"]

    time.sleep(1.5)  # several health flushes: a counted test payload would show by now
    assert health(kubectl, namespace, "billing")["requests"] == 1
    text = operator.metrics()
    assert metric_value(text, "webhook_operator_webhook_requests_24h", namespace=namespace, webhook="billing") == 1
    delivered = sum(
        v for labels, v in metric_samples(text, "webhook_operator_deliveries_total") if labels["webhook"] == "billing"
    )
    assert delivered == 1
