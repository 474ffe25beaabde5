"""spec.filter (CEL) on the real control plane: match, no match, an invalid filter, a runtime error."""

from __future__ import annotations

import json

import pytest

from tests.conftest import KubectlFn
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    apply,
    condition,
    metric_value,
    send_event,
    wait_for_condition,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

PRO_USERS = 'event.type.startsWith("User.") && event.data.plan == "pro"'


def test_only_events_the_filter_passes_are_sent_and_the_others_get_no_entry(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("pro", receiver.url("/pro"), ["User.*"], filter=PRO_USERS))
    apply(kubectl, namespace, webhook_manifest("all", receiver.url("/all"), ["User.*"]))
    wait_ready(kubectl, namespace, "pro")
    wait_ready(kubectl, namespace, "all")

    pro = send_event(kubectl, namespace, "User.Created", {"plan": "pro", "id": 1})
    assert [d["webhook"] for d in pro["status"]["deliveries"]] == ["all", "pro"]
    assert pro["status"]["phase"] == "Delivered"
    free = send_event(kubectl, namespace, "User.Created", {"plan": "free", "id": 2})
    assert [d["webhook"] for d in free["status"]["deliveries"]] == ["all"]
    assert free["status"]["delivered"] == "1/1"

    # A runtime error (no data.plan) counts as not matching, and is metered.
    broken = send_event(kubectl, namespace, "User.Created", {"id": 3})
    assert [d["webhook"] for d in broken["status"]["deliveries"]] == ["all"]
    assert [json.loads(r.body)["data"]["id"] for r in receiver.received("/pro")] == [1]
    assert len(receiver.received("/all")) == 3

    def errors() -> float | None:
        return metric_value(
            operator.metrics(), "webhook_operator_filter_errors_total", namespace=namespace, webhook="pro"
        )

    assert wait_until(errors, what="the filter error counter") == 1
    text = operator.metrics()
    labels = {"namespace": namespace, "webhook": "pro"}
    assert metric_value(text, "webhook_operator_events_filtered_total", result="false", **labels) == 1
    assert metric_value(text, "webhook_operator_events_filtered_total", result="error", **labels) == 1


def test_every_subscriber_filtering_an_event_out_makes_it_no_subscribers(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("pro", receiver.url("/pro"), ["User.*"], filter=PRO_USERS))
    wait_ready(kubectl, namespace, "pro")
    event = send_event(kubectl, namespace, "User.Created", {"plan": "free"})
    assert event["status"]["phase"] == "NoSubscribers"
    assert event["status"]["deliveries"] == []
    assert receiver.received() == []


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        pytest.param('event.type == "User.Created" &&', "Syntax error", id="syntax"),
        pytest.param('user.plan == "pro"', "undeclared reference to 'user'", id="unknown-variable"),
        pytest.param("lookup(event.data)", "undeclared reference to function 'lookup'", id="unknown-function"),
        pytest.param(
            "event.data.a.all(x, x.b.all(y, y.c.exists(z, z)))", "3 comprehensions nested", id="cost-limit-nesting"
        ),
    ],
)
def test_a_filter_that_does_not_compile_is_invalid_filter_with_the_compilers_message(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: StartOperator,
    expression: str,
    words: str,
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("bad", receiver.url("/bad"), filter=expression))
    obj = wait_for_condition(kubectl, namespace, "webhook/bad", "Ready", "False", reason="InvalidFilter")
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert message.startswith("spec.filter: ")
    assert words in message
    assert condition(obj, "Stalled")["status"] == "True"  # type: ignore[index]
    event = send_event(kubectl, namespace, "User.Created", {"plan": "pro"})
    assert event["status"]["phase"] == "NoSubscribers"

    # Fixing the filter (a new generation) makes it Ready and deliver.
    apply(kubectl, namespace, webhook_manifest("bad", receiver.url("/bad"), filter='event.data.plan == "pro"'))
    wait_ready(kubectl, namespace, "bad")
    assert send_event(kubectl, namespace, "User.Created", {"plan": "pro"})["status"]["phase"] == "Delivered"
