"""The operator's URL and destination policy on a real control plane: Ready=False with a fix, never a crash."""

from __future__ import annotations

import json

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    apply,
    condition,
    get,
    metric_value,
    secret_manifest,
    send_event,
    wait_for_condition,
    wait_ready,
    webhook_manifest,
)
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration


def ready_message(webhook: Manifest) -> str:
    ready = condition(webhook, "Ready")
    assert ready is not None
    return str(ready["message"])


def wait_blocked(kubectl: KubectlFn, namespace: str, name: str) -> Manifest:
    return wait_for_condition(kubectl, namespace, f"webhook/{name}", "Ready", "False", reason="BlockedDestination")


def test_http_url_is_not_ready_and_the_message_names_allow_http(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    url = f"http://127.0.0.1:{receiver.port}/hook"
    apply(kubectl, namespace, webhook_manifest("plain", url))
    webhook = wait_for_condition(kubectl, namespace, "webhook/plain", "Ready", "False", reason="InsecureURL")
    message = ready_message(webhook)
    assert "--allow-http" in message and "https://" in message
    assert send_event(kubectl, namespace, "User.Created")["status"]["phase"] == "NoSubscribers"


def test_http_url_is_ready_when_the_operator_runs_with_allow_http(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--allow-http")
    apply(kubectl, namespace, webhook_manifest("plain", f"http://127.0.0.1:{receiver.port}/hook"))
    webhook = wait_ready(kubectl, namespace, "plain")
    assert "http://127.0.0.1" in ready_message(webhook)


def test_loopback_url_is_blocked_without_allow_cidr_and_gets_no_delivery(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace, allow_loopback=False)
    apply(kubectl, namespace, webhook_manifest("local", receiver.url()))
    message = ready_message(wait_blocked(kubectl, namespace, "local"))
    assert "127.0.0.1 (loopback)" in message
    assert "--allow-cidr 127.0.0.1/32" in message
    assert send_event(kubectl, namespace, "User.Created")["status"]["phase"] == "NoSubscribers"
    assert receiver.received() == []
    assert metric_value(operator.metrics(), "webhook_operator_webhook_ready", namespace=namespace, webhook="local") == 0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 (link-local (cloud metadata))"),
        ("https://[::1]:8443/hook", "::1 (loopback)"),
        ("https://10.1.2.3/hook", "10.1.2.3 (private (RFC 1918))"),
        ("https://100.64.0.1/hook", "100.64.0.1 (CGNAT (100.64.0.0/10))"),
        ("https://[fd00::1]/hook", "fd00::1 (private (IPv6 ULA))"),
    ],
    ids=["cloud-metadata", "ipv6-loopback", "rfc1918", "cgnat", "ipv6-ula"],
)
def test_internal_address_literals_are_blocked_even_with_loopback_allowed(
    kubectl: KubectlFn, namespace: str, start_operator: StartOperator, url: str, shown: str
) -> None:
    # The fixture's --allow-cidr 127.0.0.0/8 must open nothing beyond IPv4 loopback.
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("internal", url))
    message = ready_message(wait_blocked(kubectl, namespace, "internal"))
    assert shown in message
    assert "--allow-cidr" in message


def test_name_resolving_to_loopback_is_blocked_without_allow_cidr(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, allow_loopback=False)
    apply(kubectl, namespace, webhook_manifest("named", f"https://localhost:{receiver.port}/hook"))
    message = ready_message(wait_blocked(kubectl, namespace, "named"))
    assert "localhost resolves only to addresses in blocked ranges" in message
    assert "--allow-cidr" in message
    assert send_event(kubectl, namespace, "User.Created")["status"]["phase"] == "NoSubscribers"
    assert receiver.received() == []


def test_name_resolving_to_an_allowed_range_is_delivered_by_name(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    apply(kubectl, namespace, webhook_manifest("named", f"https://localhost:{receiver.port}/hook"))
    wait_ready(kubectl, namespace, "named")
    assert send_event(kubectl, namespace, "User.Created")["status"]["phase"] == "Delivered"
    [request] = receiver.wait_for(1, "/hook")
    assert request.headers["host"] == f"localhost:{receiver.port}"  # the name, not the dialled address


def test_bad_input_never_crashes_the_operator(
    kubectl: KubectlFn, namespace: str, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace, allow_loopback=False)
    binary = secret_manifest("binary", {})
    binary["data"] = {"token": "//79/A=="}  # bytes that are not UTF-8
    for secret in (secret_manifest("crlf", {"token": "Bearer x\r\nX-Injected: 1"}), binary):
        apply(kubectl, namespace, secret)

    def from_secret(name: str, key: str = "token") -> list[dict[str, object]]:
        return [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}]

    public = "https://93.184.216.34/hook"  # a public literal: passes the policy without any DNS lookup
    bad = {
        "http": (webhook_manifest("http", "http://hooks.example.com/"), "InsecureURL"),
        "metadata": (webhook_manifest("metadata", "https://169.254.169.254/"), "BlockedDestination"),
        "unspecified": (webhook_manifest("unspecified", "https://0.0.0.0/"), "BlockedDestination"),
        "mapped": (webhook_manifest("mapped", "https://[::ffff:127.0.0.1]/"), "BlockedDestination"),
        "missing": (webhook_manifest("missing", public, headers=from_secret("nope")), "HeaderSecretMissing"),
        "crlf": (webhook_manifest("crlf", public, headers=from_secret("crlf")), "InvalidHeaderValue"),
        "wrongkey": (
            webhook_manifest("wrongkey", public, headers=from_secret("crlf", "other")),
            "HeaderSecretKeyMissing",
        ),
        "binary": (webhook_manifest("binary", public, headers=from_secret("binary")), "InvalidHeaderValue"),
        "badref": (
            webhook_manifest("badref", public, signingKeySecretRef={"name": "crlf", "key": "absent"}),
            "SigningKeySecretMissing",
        ),
    }
    for manifest, _ in bad.values():
        apply(kubectl, namespace, manifest)
    for name, (_, reason) in bad.items():
        webhook = wait_for_condition(kubectl, namespace, f"webhook/{name}", "Ready", "False", reason=reason)
        assert ready_message(webhook), f"{name}: Ready=False needs a message that says what to fix"
    assert "not valid UTF-8" in ready_message(get(kubectl, namespace, "webhook/binary"))

    assert operator.running, f"the operator exited:\n{operator.log()[-3000:]}"
    assert "Traceback" not in operator.log()
    # It still does its job for well-formed webhooks created afterwards.
    apply(kubectl, namespace, webhook_manifest("public", public))
    wait_ready(kubectl, namespace, "public")
    assert json.loads(kubectl("get", "webhooks", "-n", namespace, "-o", "json").stdout)["items"]
