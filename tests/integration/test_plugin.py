"""`kubectl webhooks` against the real API server and a running operator."""

from __future__ import annotations

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


def test_test_command_waits_and_prints_one_row_per_subscribed_event(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/t"), ["User.Created", "Organization.*"]))
    wait_ready(kubectl, namespace, "hook")
    result = kubectl("webhooks", "test", "hook", "-n", namespace, "--wait")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["EVENT", "STATUS", "DURATION", "ERROR"]
    assert {line.split()[0] for line in lines[1:]} == {"User.Created", "Organization.Test"}
    assert all(line.split()[1] == "200" for line in lines[1:])
    assert len(receiver.received("/t")) == 2


def test_test_command_exits_non_zero_when_the_endpoint_fails(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/down", Reply(503))
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/down")))
    wait_ready(kubectl, namespace, "hook")
    result = kubectl("webhooks", "test", "hook", "-n", namespace, "--wait", check=False)
    assert result.returncode == 1
    assert "503" in result.stdout


def test_logs_lists_requests_newest_first_and_failed_filters(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/l", Reply(200), Reply(400))
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/l"), retry={"maxRetries": 0}))
    wait_ready(kubectl, namespace, "hook")
    ok = send_event(kubectl, namespace, "User.Created", {"n": 1})
    bad = send_event(kubectl, namespace, "User.Created", {"n": 2})
    table = kubectl("webhooks", "logs", "hook", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:4] == ["TIME", "EVENT", "WEBHOOKEVENT", "OUTCOME"]
    rows = {line.split()[2]: line.split()[3] for line in table[1:]}
    assert rows == {ok["metadata"]["name"]: "Succeeded", bad["metadata"]["name"]: "Failed"}
    failed = kubectl("webhooks", "logs", "hook", "-n", namespace, "--failed").stdout.splitlines()
    assert len(failed) == 2 and bad["metadata"]["name"] in failed[1] and "HTTP 400" in failed[1]


def test_rotate_key_waits_for_the_new_key(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/r")))
    wait_ready(kubectl, namespace, "hook")
    before = get(kubectl, namespace, "secret/hook-signing-key")["data"]["signingKey"]
    result = kubectl("webhooks", "rotate-key", "hook", "-n", namespace, "--wait")
    assert "rotated at" in result.stdout
    assert get(kubectl, namespace, "secret/hook-signing-key")["data"]["signingKey"] != before


def test_redeliver_sends_failed_deliveries_again(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    receiver.script("/rd", Reply(500), Reply(200))
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/rd"), retry={"maxRetries": 0}))
    wait_ready(kubectl, namespace, "hook")
    event = send_event(kubectl, namespace, "User.Created")
    assert event["status"]["phase"] == "Failed"
    result = kubectl("webhooks", "redeliver", event["metadata"]["name"], "-n", namespace, "--wait")
    assert "phase Delivered, delivered 1/1" in result.stdout
    first, second = receiver.received("/rd")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_unknown_names_give_a_clear_error(kubectl: KubectlFn, namespace: str) -> None:
    for args in (["test", "nope"], ["logs", "nope"], ["rotate-key", "nope"], ["redeliver", "nope"]):
        result = kubectl("webhooks", *args, "-n", namespace, check=False)
        assert result.returncode == 1
        assert f'"nope" not found in namespace "{namespace}"' in result.stderr
