"""Start-up cost on a real control plane: a restart reads the webhooks' Secrets without a request per webhook."""

from __future__ import annotations

import time

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    apply,
    metric_samples,
    secret_manifest,
    send_event,
    wait_ready,
    webhook_manifest,
)
from tests.support.receiver import Received, Receiver

pytestmark = pytest.mark.integration

WEBHOOKS = 12


def secret_gets(kubectl: KubectlFn) -> float:
    """GETs of single Secrets the API server has answered so far (every client, every namespace)."""
    text = kubectl("get", "--raw", "/metrics").stdout
    return sum(
        value
        for labels, value in metric_samples(text, "apiserver_request_total")
        if labels.get("resource") == "secrets" and labels.get("verb") == "GET"
    )


def test_restart_reads_signing_keys_from_one_list_and_still_follows_secret_changes(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    headers = [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "shared-token", "key": "token"}}}]
    apply(kubectl, namespace, secret_manifest("shared-token", {"token": "Bearer one"}))
    operator = start_operator(namespace)
    for i in range(WEBHOOKS):
        apply(kubectl, namespace, webhook_manifest(f"hook-{i}", receiver.url(f"/h/{i}"), headers=headers))
    for i in range(WEBHOOKS):
        wait_ready(kubectl, namespace, f"hook-{i}")
    operator.stop()

    before = secret_gets(kubectl)
    operator = start_operator(namespace)
    # kopf's Secret watch hands over every existing Secret after start-up: none has changed since the
    # load read it, so none may cause a reconcile (which read them again, one GET each).
    time.sleep(3)
    gets = secret_gets(kubectl) - before
    # One GET per Secret per webhook at load, and again for every Secret the watch listed, used to
    # make 72 GETs here. Now: the shared header Secret once, the signing keys from one list.
    assert gets <= 2, f"{gets:.0f} Secret GETs at a restart with {WEBHOOKS} webhooks"

    request = deliver(kubectl, namespace, receiver, "/h/3")
    assert request.headers["authorization"] == "Bearer one"
    # A change after the restart is still followed: a new resourceVersion reconciles its readers.
    apply(kubectl, namespace, secret_manifest("shared-token", {"token": "Bearer two"}))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        request = deliver(kubectl, namespace, receiver, "/h/3")
        if request.headers["authorization"] == "Bearer two":
            break
    assert request.headers["authorization"] == "Bearer two"
    assert "Bearer" not in operator.log()


def deliver(kubectl: KubectlFn, namespace: str, receiver: Receiver, path: str) -> Received:
    """Send one event every webhook gets (returns once it is final); the request that reached ``path``."""
    seen = len([r for r in receiver.requests if r.path == path])
    send_event(kubectl, namespace, "User.Created")
    hits = [r for r in receiver.requests if r.path == path]
    assert len(hits) > seen, f"nothing reached {path}"
    return hits[-1]
