"""kubectl webhooks replay on the real control plane: the --since window, --failed-only, one webhook
only, the same webhook-ids, and the progress it reports."""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.conftest import KubectlFn
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    apply,
    get,
    send_event,
    wait_ready,
    webhook_manifest,
)
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration


def ids(receiver: Receiver, path: str, start: int = 0) -> list[tuple[int, str]]:
    return [(json.loads(r.body)["data"]["n"], r.headers["webhook-id"]) for r in receiver.received(path)[start:]]


def window(since: float) -> str:
    """A --since that takes events created from ``since`` on (creationTimestamp has whole seconds) and
    none created 4 s or more before it, however long the steps before it took on a busy machine."""
    return f"{math.ceil(time.time() - since) + 2}s"


def test_replay_redelivers_one_webhooks_events_of_the_window_with_the_same_ids(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    # /a answers 200 to the old event and to n=1, 500 to n=2, then 200 again; /b always 200.
    receiver.script("/a", Reply(200), Reply(200), Reply(500), Reply(200))
    apply(kubectl, namespace, webhook_manifest("a", receiver.url("/a"), retry={"maxRetries": 0}))
    apply(kubectl, namespace, webhook_manifest("b", receiver.url("/b"), retry={"maxRetries": 0}))
    wait_ready(kubectl, namespace, "a")
    wait_ready(kubectl, namespace, "b")
    old = send_event(kubectl, namespace, "User.Created", {"n": 0})
    time.sleep(7)  # the old event stays out of the window below
    since_one = time.time()
    one = send_event(kubectl, namespace, "User.Created", {"n": 1})
    two = send_event(kubectl, namespace, "User.Created", {"n": 2})
    assert two["status"]["phase"] == "PartiallyFailed"
    first_ids = dict(ids(receiver, "/a"))
    b_before = len(receiver.received("/b"))

    # --failed-only: just the failed delivery to a, with its webhook-id; b is left alone.
    start = len(receiver.received("/a"))
    replay = ("webhooks", "replay", "a", "-n", namespace)
    result = kubectl(*replay, "--since", window(since_one), "--failed-only", "--wait")
    assert "found 1 failed deliveries to webhook" in result.stdout, result.stdout
    assert "requested 1" in result.stdout
    assert "delivered 1, failed 0, pending 0" in result.stdout
    assert ids(receiver, "/a", start) == [(2, first_ids[2])]
    status = get(kubectl, namespace, f"webhookevent/{two['metadata']['name']}")["status"]
    assert status["phase"] == "Delivered"
    assert status["replay"]["requestedAt"].endswith(" a failed")
    assert "redelivery" not in status

    # Without --failed-only: every delivery of the window to a, succeeded ones too; not the old event.
    start = len(receiver.received("/a"))
    result = kubectl("webhooks", "replay", "a", "-n", namespace, "--since", window(since_one), "--wait")
    assert "found 2 deliveries to webhook" in result.stdout, result.stdout
    assert "delivered 2, failed 0, pending 0" in result.stdout
    assert sorted(ids(receiver, "/a", start)) == [(1, first_ids[1]), (2, first_ids[2])]
    assert len(receiver.received("/b")) == b_before
    for event in (one, two):
        entries = get(kubectl, namespace, f"webhookevent/{event['metadata']['name']}")["status"]["deliveries"]
        assert [e["outcome"] for e in entries] == ["Succeeded", "Succeeded"]
        assert {e["id"] for e in entries} == {d["id"] for d in event["status"]["deliveries"]}
    assert get(kubectl, namespace, f"webhookevent/{old['metadata']['name']}")["status"].get("replay") is None

    # A wider window takes the old event too.
    start = len(receiver.received("/a"))
    result = kubectl("webhooks", "replay", "a", "-n", namespace, "--since", "1h")
    assert "found 3 deliveries" in result.stdout
    assert "requested 3" in result.stdout
    receiver.wait_for(start + 3, "/a", timeout=30)


def test_replay_reports_failures_and_exits_non_zero_and_the_redeliver_annotation_still_works(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/down", Reply(503))
    apply(kubectl, namespace, webhook_manifest("down", receiver.url("/down"), retry={"maxRetries": 0}))
    wait_ready(kubectl, namespace, "down")
    event = send_event(kubectl, namespace, "User.Created", {"n": 1})
    assert event["status"]["phase"] == "Failed"
    result = kubectl("webhooks", "replay", "down", "-n", namespace, "--since", "1h", "--wait", check=False)
    assert result.returncode == 1
    assert "delivered 0, failed 1, pending 0" in result.stdout
    assert len(receiver.received("/down")) == 2
    # The SPEC's redeliver (every failed delivery of the event) is unchanged beside replay.
    receiver.script("/down", Reply(200))
    result = kubectl("webhooks", "redeliver", event["metadata"]["name"], "-n", namespace, "--wait")
    assert "phase Delivered" in result.stdout
    status = get(kubectl, namespace, f"webhookevent/{event['metadata']['name']}")["status"]
    assert status["redelivery"]["requestedAt"] and status["replay"]["requestedAt"]


def test_replay_of_an_unknown_webhook_says_so(kubectl: KubectlFn, namespace: str) -> None:
    result = kubectl("webhooks", "replay", "nope", "-n", namespace, "--since", "1h", check=False)
    assert result.returncode == 1
    assert f'Webhook "nope" not found in namespace "{namespace}"' in result.stderr
