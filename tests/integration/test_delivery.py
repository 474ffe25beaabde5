"""Deliveries on the real control plane to real HTTPS receivers: the wire format, signatures and matching."""

from __future__ import annotations

import json
import time
import uuid
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
    merge_patch,
    secret_manifest,
    send_event,
    signing_keys,
    verify_received,
    verify_signatures,
    wait_event_final,
    wait_ready,
    webhook_manifest,
)
from tests.support.receiver import Received, Receiver
from webhook_operator import __version__

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def every_request_is_signed(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Iterator[None]:
    """Whatever a test checks, every request its receiver got must verify as a receiver verifies it."""
    yield
    verify_received(kubectl, namespace, receiver.received())


def add_webhook(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, name: str, events: list[str], **spec: Any
) -> None:
    """A Webhook posting to ``/<name>`` on the receiver, once the operator reports it Ready."""
    apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), events, **spec))
    wait_ready(kubectl, namespace, name)


def expected_body(event: Manifest, namespace: str, webhook: str) -> bytes:
    """The contract's body, built here from the stored event rather than with the operator's code."""
    meta, spec = event["metadata"], event["spec"]
    # creationTimestamp has whole seconds; the contract asks for milliseconds.
    created_at = meta["creationTimestamp"].removesuffix("Z") + ".000Z"
    data = json.dumps(spec.get("data"), separators=(",", ":"), ensure_ascii=False)
    text = (
        f'{{"hookId":"{namespace}/{webhook}","event":"{spec["event"]}","createdAt":"{created_at}",'
        f'"eventId":"{meta["uid"]}","data":{data}}}'
    )
    return text.encode("utf-8")


def event_ids(requests: list[Received]) -> list[str]:
    return [json.loads(r.body)["eventId"] for r in requests]


@pytest.fixture
def other_namespace(kubectl: KubectlFn) -> Iterator[str]:
    name = f"other-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- the request ------------------------------------------------------------------------
def test_body_is_byte_exact_compact_json_in_contract_key_order(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "billing-sync", ["User.Created"])
    data = {"email": "zoë@example.com", "id": "u_123", "tags": ["a", "b"], "profile": {"age": 42, "vip": True}}

    event = send_event(kubectl, namespace, "User.Created", data)

    assert event["status"]["phase"] == "Delivered"
    (request,) = receiver.wait_for(1, "/billing-sync")
    assert request.body == expected_body(event, namespace, "billing-sync")
    assert list(json.loads(request.body)) == ["hookId", "event", "createdAt", "eventId", "data"]
    assert json.loads(request.body)["createdAt"].endswith(".000Z")


def test_event_without_data_sends_data_null(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Deleted"])

    event = send_event(kubectl, namespace, "User.Deleted")

    (request,) = receiver.wait_for(1, "/hook")
    assert request.body == expected_body(event, namespace, "hook")
    assert request.body.endswith(b',"data":null}')


def test_headers_carry_content_type_user_agent_and_custom_headers(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, secret_manifest("billing-token", {"token": "Bearer s3cr3t-token"}))
    headers = [
        {"name": "X-Team", "value": "billing"},
        {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "billing-token", "key": "token"}}},
    ]
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"], headers=headers)

    send_event(kubectl, namespace, "User.Created", {"id": "u1"})

    (request,) = receiver.wait_for(1, "/hook")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"webhook-operator/{__version__}"
    assert request.headers["x-team"] == "billing"
    assert request.headers["authorization"] == "Bearer s3cr3t-token"
    assert request.headers["content-length"] == str(len(request.body))


def test_every_request_verifies_with_standardwebhooks_and_the_logto_hmac(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["*"])
    key, standard_secret = signing_keys(kubectl, namespace, "hook")
    names = [create(kubectl, namespace, event_manifest(e, {"n": i})) for i, e in enumerate(["A.B", "C", "User.X"])]
    for name in names:
        wait_event_final(kubectl, namespace, name)

    requests = receiver.wait_for(3, "/hook")
    assert len(requests) == 3
    for request in requests:
        verify_signatures(request.body, request.headers, key, standard_secret)
        assert abs(int(request.headers["webhook-timestamp"]) - request.at) < 5


def test_webhook_id_header_is_the_delivery_id_in_event_status(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])

    event = send_event(kubectl, namespace, "User.Created")

    (request,) = receiver.wait_for(1, "/hook")
    (entry,) = event["status"]["deliveries"]
    assert entry["webhook"] == "hook"
    assert entry["id"].startswith("msg_")
    assert request.headers["webhook-id"] == entry["id"]
    assert entry["outcome"] == "Succeeded" and entry["attempts"] == 1 and entry["statusCode"] == 200
    assert event["status"]["delivered"] == "1/1"
    assert event["status"]["completionTime"]


def test_delivery_reaches_the_receiver_promptly_after_creation(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])
    latencies = []
    for i in range(5):
        before = time.time()
        name = create(kubectl, namespace, event_manifest("User.Created", {"n": i}))
        (request,) = receiver.wait_for(i + 1, "/hook")[i:]
        latencies.append(request.at - before)
        wait_event_final(kubectl, namespace, name)
    # Includes starting kubectl; on a busy two-core machine that alone is a few hundred ms.
    print(f"\nevent creation -> receipt, via kubectl create: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    assert max(latencies) < 3.0


# -- matching -----------------------------------------------------------------------------
def test_exact_subscription_gets_only_its_event(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"])

    other = send_event(kubectl, namespace, "User.Deleted")
    wanted = send_event(kubectl, namespace, "User.Created")

    assert other["status"]["phase"] == "NoSubscribers"
    assert wanted["status"]["phase"] == "Delivered"
    assert event_ids(receiver.received("/hook")) == [wanted["metadata"]["uid"]]


def test_prefix_wildcard_matches_nested_events_but_not_the_prefix_or_lookalikes(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.*"])

    outcomes = {e: send_event(kubectl, namespace, e) for e in ["User", "UserX.Created", "Organization.Created"]}
    matched = [send_event(kubectl, namespace, e) for e in ["User.Created", "User.Data.Updated"]]

    assert {e: o["status"]["phase"] for e, o in outcomes.items()} == dict.fromkeys(outcomes, "NoSubscribers")
    assert [m["status"]["phase"] for m in matched] == ["Delivered", "Delivered"]
    assert [json.loads(r.body)["event"] for r in receiver.received("/hook")] == ["User.Created", "User.Data.Updated"]


def test_star_subscription_gets_every_event(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["*"])

    events = ["User.Created", "Organization.Membership.Updated", "Ping"]
    sent = [send_event(kubectl, namespace, e) for e in events]

    assert [e["status"]["phase"] for e in sent] == ["Delivered"] * 3
    assert [json.loads(r.body)["event"] for r in receiver.received("/hook")] == events


def test_event_in_another_namespace_is_not_delivered(
    kubectl: KubectlFn, namespace: str, other_namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    # One operator watching both namespaces: only the namespace boundary keeps the event out.
    start_operator(namespace, "--namespace", other_namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["*"])

    foreign = send_event(kubectl, other_namespace, "User.Created")
    local = send_event(kubectl, namespace, "User.Created")

    assert foreign["status"]["phase"] == "NoSubscribers"
    assert local["status"]["phase"] == "Delivered"
    assert event_ids(receiver.received()) == [local["metadata"]["uid"]]


def test_disabled_webhook_gets_nothing(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "off", ["User.Created"], enabled=False)
    add_webhook(kubectl, namespace, receiver, "on", ["User.Created"])

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "Delivered"
    assert [d["webhook"] for d in event["status"]["deliveries"]] == ["on"]
    assert len(receiver.received("/on")) == 1
    assert receiver.received("/off") == []


def test_no_matching_webhook_gives_phase_no_subscribers(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["Organization.*"])

    event = send_event(kubectl, namespace, "User.Created")

    assert event["status"]["phase"] == "NoSubscribers"
    assert event["status"].get("deliveries") in (None, [])
    assert event["status"]["delivered"] == "0/0"
    assert event["status"]["completionTime"]
    assert receiver.received() == []


def test_event_created_while_disabled_is_not_sent_after_reenabling(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    add_webhook(kubectl, namespace, receiver, "hook", ["User.Created"], enabled=False)
    missed = send_event(kubectl, namespace, "User.Created", {"when": "disabled"})
    assert missed["status"]["phase"] == "NoSubscribers"

    merge_patch(kubectl, namespace, "webhook/hook", {"spec": {"enabled": True}})
    # Ready for the new generation means the operator's index has the webhook enabled.
    reenabled = wait_ready(kubectl, namespace, "hook")
    assert "delivering" in str(condition(reenabled, "Ready"))
    later = send_event(kubectl, namespace, "User.Created", {"when": "enabled"})

    assert later["status"]["phase"] == "Delivered"
    assert event_ids(receiver.received("/hook")) == [later["metadata"]["uid"]]
    assert get(kubectl, namespace, f"webhookevent/{missed['metadata']['name']}")["status"]["phase"] == "NoSubscribers"
