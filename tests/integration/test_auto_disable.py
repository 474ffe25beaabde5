"""Auto-disable on the real control plane: a 410 or sustained failure suspends a webhook without
touching its spec; the suspension survives a restart; `kubectl webhooks resume` or a spec change
resumes it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import KubectlFn
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    apply,
    condition,
    create,
    event_manifest,
    get,
    merge_patch,
    metric_value,
    send_event,
    wait_event_final,
    wait_for_condition,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration


def events_of(kubectl: KubectlFn, namespace: str, reason: str) -> list[str]:
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [item["message"] for item in items if item.get("reason") == reason]


def test_410_suspends_without_touching_spec_survives_a_restart_and_resume_or_a_spec_change_resumes(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    receiver.script("/gone", Reply(410, b"gone"))
    apply(kubectl, namespace, webhook_manifest("gone", receiver.url("/gone")))
    spec_before = wait_ready(kubectl, namespace, "gone")["spec"]

    first = send_event(kubectl, namespace, "User.Created", {"n": 1})
    assert first["status"]["deliveries"][0]["statusCode"] == 410
    suspended = wait_for_condition(kubectl, namespace, "webhook/gone", "Ready", "False", reason="AutoDisabled")
    message = condition(suspended, "Ready")["message"]  # type: ignore[index]
    assert "410 Gone" in message and f"kubectl webhooks resume gone -n {namespace}" in message
    assert condition(suspended, "Stalled")["status"] == "True"  # type: ignore[index]
    assert suspended["spec"] == spec_before
    assert suspended["status"]["autoDisable"]["reason"] == "Gone"
    assert wait_until(lambda: events_of(kubectl, namespace, "AutoDisabled"), what="the AutoDisabled Event")
    labels = {"namespace": namespace, "webhook": "gone"}
    assert (
        metric_value(operator.metrics(), "webhook_operator_webhook_auto_disabled_total", reason="Gone", **labels) == 1
    )
    assert metric_value(operator.metrics(), "webhook_operator_webhook_suspended", **labels) == 1

    # Suspended: not sent, like a disabled webhook.
    assert send_event(kubectl, namespace, "User.Created", {"n": 2})["status"]["phase"] == "NoSubscribers"
    assert len(receiver.received("/gone")) == 1

    # The suspension is in status: a new operator process keeps it.
    operator.stop()
    operator = start_operator(namespace)
    assert send_event(kubectl, namespace, "User.Created", {"n": 3})["status"]["phase"] == "NoSubscribers"
    assert condition(get(kubectl, namespace, "webhook/gone"), "Ready")["reason"] == "AutoDisabled"  # type: ignore[index]

    # Resume with the plugin (the annotation), once the receiver is fixed.
    receiver.script("/gone", Reply(200))
    result = kubectl("webhooks", "resume", "gone", "-n", namespace, "--wait")
    assert "resumed" in result.stdout
    wait_ready(kubectl, namespace, "gone")
    assert send_event(kubectl, namespace, "User.Created", {"n": 4})["status"]["phase"] == "Delivered"
    assert wait_until(lambda: events_of(kubectl, namespace, "Resumed"), what="the Resumed Event")

    # Suspended again by a 410, then resumed by a spec change (a new generation).
    receiver.script("/gone", Reply(410))
    send_event(kubectl, namespace, "User.Created", {"n": 5})
    wait_for_condition(kubectl, namespace, "webhook/gone", "Ready", "False", reason="AutoDisabled")
    receiver.script("/gone", Reply(200))
    merge_patch(kubectl, namespace, "webhook/gone", {"spec": {"description": "receiver fixed"}})
    wait_ready(kubectl, namespace, "gone")
    assert send_event(kubectl, namespace, "User.Created", {"n": 6})["status"]["phase"] == "Delivered"
    assert [json.loads(r.body)["data"]["n"] for r in receiver.received("/gone")] == [1, 4, 5, 6]
    assert "autoDisable" not in get(kubectl, namespace, "webhook/gone")["spec"]


def test_every_attempt_failing_for_after_failing_for_suspends_and_ends_the_delivery_in_progress(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/down", Reply(500))
    retry = {"maxRetries": 10, "backoffSeconds": 0.5, "maxBackoffSeconds": 1, "timeoutSeconds": 5}
    apply(
        kubectl,
        namespace,
        webhook_manifest("down", receiver.url("/down"), retry=retry, autoDisable={"afterFailingFor": "3s"}),
    )
    wait_ready(kubectl, namespace, "down")
    name = create(kubectl, namespace, event_manifest("User.Created", {"n": 1}))
    obj = wait_for_condition(kubectl, namespace, "webhook/down", "Ready", "False", reason="AutoDisabled", timeout=30)
    assert obj["status"]["autoDisable"]["reason"] == "FailingTooLong"
    assert "every attempt since" in condition(obj, "Ready")["message"]  # type: ignore[index]
    event = wait_event_final(kubectl, namespace, name)
    entry = event["status"]["deliveries"][0]
    assert entry["outcome"] == "Failed"
    assert "auto-disabled" in entry["error"]
    # 3 s of failures at 0.5-1 s apart: far fewer than the 11 attempts the retry policy allows.
    assert 3 <= len(receiver.received("/down")) < 11


def test_after_failing_for_zero_never_suspends(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--auto-disable-after", "1s")
    receiver.script("/never", Reply(410))
    apply(kubectl, namespace, webhook_manifest("never", receiver.url("/never"), autoDisable={"afterFailingFor": "0s"}))
    wait_ready(kubectl, namespace, "never")
    for n in range(2):
        assert send_event(kubectl, namespace, "User.Created", {"n": n})["status"]["phase"] == "Failed"
    assert len(receiver.received("/never")) == 2
    assert condition(get(kubectl, namespace, "webhook/never"), "Ready")["status"] == "True"  # type: ignore[index]


def test_a_standby_follows_the_leaders_suspension_and_keeps_it_when_it_takes_over(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    leader = start_operator(namespace, env={"POD_NAME": "replica-a"})
    standby = start_operator(namespace, standby=True, env={"POD_NAME": "replica-b"})
    receiver.script("/gone", Reply(410))
    apply(kubectl, namespace, webhook_manifest("gone", receiver.url("/gone")))
    wait_ready(kubectl, namespace, "gone")
    send_event(kubectl, namespace, "User.Created", {"n": 1})
    wait_for_condition(kubectl, namespace, "webhook/gone", "Ready", "False", reason="AutoDisabled")
    labels = {"namespace": namespace, "webhook": "gone"}
    # Decided and counted by the leader only; the standby shows the suspension it read from status.
    assert metric_value(leader.metrics(), "webhook_operator_webhook_auto_disabled_total", reason="Gone", **labels) == 1
    assert (
        metric_value(standby.metrics(), "webhook_operator_webhook_auto_disabled_total", reason="Gone", **labels) is None
    )
    assert wait_until(
        lambda: metric_value(standby.metrics(), "webhook_operator_webhook_suspended", **labels) == 1,
        what="the standby to follow the suspension",
    )

    leader.stop()  # releases the Lease: the standby takes over
    wait_until(lambda: metric_value(standby.metrics(), "webhook_operator_leader") == 1, what="the take-over")
    assert send_event(kubectl, namespace, "User.Created", {"n": 2})["status"]["phase"] == "NoSubscribers"
    assert len(receiver.received("/gone")) == 1
    assert condition(get(kubectl, namespace, "webhook/gone"), "Ready")["reason"] == "AutoDisabled"  # type: ignore[index]
