"""API errors on the real control plane: transient is never final.

The operator talks to the API server through ``FaultProxy``, which answers chosen requests with
503 or 429 (what an overloaded or restarting API server answers) and passes everything else on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultproxy import Fault, FaultProxy
from tests.support.kube_helpers import (
    KubectlFn,
    apply,
    create,
    delete,
    event_manifest,
    get,
    get_or_none,
    secret_manifest,
    series_with_labels,
    verify_received,
    wait_for_condition,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.operator_process import OperatorProcess
from tests.support.receiver import Receiver, Reply

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(cluster: Any) -> Iterator[FaultProxy]:
    server = FaultProxy(cluster.kubeconfig)
    yield server
    server.close()


@pytest.fixture
def operators(ca_bundle: Path, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    started: list[OperatorProcess] = []
    yield started
    for proc in started:
        proc.stop()


def start_through(
    proxy: FaultProxy, operators: list[OperatorProcess], namespace: str, ca_bundle: Path, tmp_path: Path, *extra: str
) -> OperatorProcess:
    args = ["--namespace", namespace, "--ca-bundle", str(ca_bundle), "--health-flush-interval", "0.5s"]
    args += ["--allow-cidr", "127.0.0.0/8", *extra]
    kubeconfig = proxy.write_kubeconfig(tmp_path / "proxy-kubeconfig")
    proc = OperatorProcess(kubeconfig, args, tmp_path / f"operator-{len(operators)}.log")
    operators.append(proc)
    return proc.start()


def phase(kubectl: KubectlFn, namespace: str, name: str) -> str | None:
    obj = get_or_none(kubectl, namespace, f"webhookevent/{name}")
    return None if obj is None else (obj.get("status") or {}).get("phase")


def retry(backoff: float) -> dict[str, Any]:
    return {"maxRetries": 3, "backoffSeconds": backoff, "maxBackoffSeconds": backoff, "timeoutSeconds": 5}


def test_a_503_reading_a_secret_at_startup_keeps_the_webhook_and_its_pending_retries(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    proxy: FaultProxy,
    operators: list[OperatorProcess],
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    """A restart finds an event Retrying; the first reconcile of its webhook meets 503s. The retry
    waits for the webhook instead of ending `Failed: not delivered: webhook deleted`, and an event
    created meanwhile is matched to it too."""
    first = start_through(proxy, operators, namespace, ca_bundle, tmp_path)
    receiver.script("/hook", Reply(500), Reply(200))
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), retry=retry(4)))
    wait_ready(kubectl, namespace, "hook")
    retrying = create(kubectl, namespace, event_manifest("User.Created", {"n": 1}))
    wait_until(lambda: phase(kubectl, namespace, retrying) == "Delivering", what="the first attempt to fail")
    first.kill()

    # Reads of Secrets, one by one or the start-up list of the signing keys.
    secret_reads = proxy.add(Fault("GET", rf"/api/v1/namespaces/{namespace}/secrets(/[^/]+)?", status=503))
    start_through(proxy, operators, namespace, ca_bundle, tmp_path)
    wait_until(lambda: secret_reads.hits >= 2, what="the reconcile to meet 503s", timeout=15)
    created = create(kubectl, namespace, event_manifest("User.Created", {"n": 2}))
    time.sleep(5)  # past the retry's due time: it must wait, not fail
    assert phase(kubectl, namespace, retrying) == "Delivering"
    proxy.clear()

    for name in (retrying, created):
        wait_until(lambda n=name: phase(kubectl, namespace, n) == "Delivered", what=f"{name} delivered", timeout=60)
    assert len(receiver.received("/hook")) == 3
    verify_received(kubectl, namespace, receiver.received())


def test_a_header_secret_recreated_while_a_retry_is_due_does_not_fail_it(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    start_operator: Any,
) -> None:
    """Ready=False for a moment (external-secrets recreating a Secret) ends no delivery."""
    start_operator(namespace)
    apply(kubectl, namespace, secret_manifest("token", {"value": "Bearer t1"}))
    header = {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}
    receiver.script("/hook", Reply(500), Reply(200))
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook"), retry=retry(2), headers=[header]))
    wait_ready(kubectl, namespace, "hook")
    name = create(kubectl, namespace, event_manifest("User.Created"))
    receiver.wait_for(1, "/hook", timeout=15)

    delete(kubectl, namespace, "secret/token")
    wait_for_condition(kubectl, namespace, "webhook/hook", "Ready", "False", reason="HeaderSecretMissing")
    time.sleep(3)  # the retry falls due while the webhook is not Ready
    assert phase(kubectl, namespace, name) == "Delivering"
    apply(kubectl, namespace, secret_manifest("token", {"value": "Bearer t2"}))

    wait_until(lambda: phase(kubectl, namespace, name) == "Delivered", what="the retry after the Secret is back")
    (entry,) = get(kubectl, namespace, f"webhookevent/{name}")["status"]["deliveries"]
    assert (entry["outcome"], entry["attempts"]) == ("Succeeded", 2)
    assert receiver.received("/hook")[-1].headers["authorization"] == "Bearer t2"
    verify_received(kubectl, namespace, receiver.received())


def test_status_writes_failing_for_100_seconds_are_not_abandoned(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    proxy: FaultProxy,
    operators: list[OperatorProcess],
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    """429 + Retry-After, then 503, on every status write for 100 s (an API server outage of the
    length the fault suite uses): the final status is written after it and the event is then
    deleted by its TTL. Status writes used to give up after two rounds of ~48 s: the event stayed
    without a final status, never deleted, until a restart sent it again."""
    start_through(proxy, operators, namespace, ca_bundle, tmp_path, "--event-ttl", "3s")
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook")))
    wait_ready(kubectl, namespace, "hook")
    status_path = rf"/apis/webhook-operator.io/v1alpha1/namespaces/{namespace}/webhookevents/[^/]+/status"
    proxy.add(Fault("PATCH", status_path, status=429, retry_after=1, times=3))
    writes = proxy.add(Fault("PATCH", status_path, status=503))
    name = create(kubectl, namespace, event_manifest("User.Created"))
    receiver.wait_for(1, "/hook", timeout=15)
    time.sleep(100)
    assert writes.hits >= 3 and phase(kubectl, namespace, name) is None
    proxy.clear()

    def delivered_or_deleted() -> str | None:
        obj = get_or_none(kubectl, namespace, f"webhookevent/{name}")
        if obj is None:
            return "deleted"
        return "delivered" if (obj.get("status") or {}).get("phase") == "Delivered" else None

    wait_until(delivered_or_deleted, what="the final status to be written", timeout=45)
    wait_until(lambda: get_or_none(kubectl, namespace, f"webhookevent/{name}") is None, what="TTL deletion")
    assert len(receiver.received("/hook")) == 1
    verify_received(kubectl, namespace, receiver.received())


def test_a_deleted_webhooks_series_stay_gone_when_its_attempt_ends_later(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: Any
) -> None:
    operator = start_operator(namespace)
    receiver.script("/hook", Reply(200, delay_s=3))
    apply(kubectl, namespace, webhook_manifest("hook", receiver.url("/hook")))
    wait_ready(kubectl, namespace, "hook")
    create(kubectl, namespace, event_manifest("User.Created"))
    receiver.wait_for(1, "/hook", timeout=15)
    delete(kubectl, namespace, "webhook/hook")
    wait_until(
        lambda: not series_with_labels(operator.metrics(), namespace=namespace, webhook="hook"),
        what="the deleted webhook's series to go",
    )
    time.sleep(3.5)  # the attempt ends now
    assert series_with_labels(operator.metrics(), namespace=namespace, webhook="hook") == []
