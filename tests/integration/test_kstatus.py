"""What kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, the library Flux uses) makes of real objects.

The objects are the operator's own work, read back from the API server, and the verdicts come from
the library itself (tests/kstatus, a small Go command), not from a re-implementation of its rules.
Argo CD's health scripts must come to the same verdict on each of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devcluster.binaries import BinariesUnavailable
from tests.support import kstatus
from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    apply,
    create,
    event_manifest,
    send_event,
    wait_for_condition,
    wait_for_object,
    wait_ready,
    webhook_manifest,
)
from tests.support.receiver import Receiver, Reply
from tests.unit.test_argocd_health import WEBHOOK_LUA, WEBHOOKEVENT_LUA, run_health

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def kstatus_helper() -> Iterator[None]:
    try:
        kstatus.find_or_build()
    except BinariesUnavailable as exc:
        pytest.skip(f"the kstatus helper cannot be built here: {exc}")
    yield


# What Argo CD's health (deploy/argocd-health) must say where kstatus says...
ARGOCD_FOR = {"Current": "Healthy", "InProgress": "Progressing", "Failed": "Degraded"}


def verdicts(*objects: Manifest) -> dict[str, tuple[str, str]]:
    """kstatus's (status, message) by name; Argo CD's health script must agree on each object."""
    got = kstatus.compute(list(objects))
    for obj in objects:
        script = WEBHOOK_LUA if obj["kind"] == "Webhook" else WEBHOOKEVENT_LUA
        name = obj["metadata"]["name"]
        argocd = run_health(script, obj)["status"]
        assert argocd == ARGOCD_FOR[got[name][0]], f"{name}: kstatus {got[name]}, Argo CD {argocd}"
    return got


def conditions(obj: Manifest) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or ()}


def test_kstatus_reads_each_event_phase_from_the_operators_status(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "0", "--failed-event-ttl", "0")
    receiver.script("/bad", Reply(400, b"no"))
    receiver.script("/slow", Reply(503, b"later"))
    apply(kubectl, namespace, webhook_manifest("good", receiver.url("/good"), ["User.Created", "Order.Paid"]))
    apply(kubectl, namespace, webhook_manifest("bad", receiver.url("/bad"), ["User.Deleted", "Order.Paid"]))
    slow_retry = {"maxRetries": 3, "backoffSeconds": 600, "maxBackoffSeconds": 600, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("slow", receiver.url("/slow"), ["Order.Shipped"], retry=slow_retry))
    for name in ("good", "bad", "slow"):
        wait_ready(kubectl, namespace, name)

    delivered = send_event(kubectl, namespace, "User.Created")
    failed = send_event(kubectl, namespace, "User.Deleted")
    partially = send_event(kubectl, namespace, "Order.Paid")
    nobody = send_event(kubectl, namespace, "Ping")
    name = create(kubectl, namespace, event_manifest("Order.Shipped"))
    delivering = wait_for_object(
        kubectl,
        namespace,
        f"webhookevent/{name}",
        lambda obj: (obj.get("status") or {}).get("phase") == "Delivering",
        what="the 503 event to wait for its retry",
    )

    assert [e["status"]["phase"] for e in (delivered, failed, partially, nobody)] == [
        "Delivered",
        "Failed",
        "PartiallyFailed",
        "NoSubscribers",
    ]
    got = verdicts(delivered, failed, partially, nobody, delivering)
    assert got[delivered["metadata"]["name"]][0] == "Current"
    assert got[nobody["metadata"]["name"]][0] == "Current"
    assert got[failed["metadata"]["name"]] == ("Failed", "0/1 delivered")
    assert got[partially["metadata"]["name"]] == ("Failed", "1/2 delivered")
    assert got[name][0] == "InProgress"

    for event in (delivered, failed, partially, nobody, delivering):
        status = event["status"]
        assert status["observedGeneration"] == event["metadata"]["generation"]
        for c in status["conditions"]:
            assert c["observedGeneration"] == event["metadata"]["generation"]
            assert c["reason"] == status["phase"] and c["lastTransitionTime"]
    assert set(conditions(delivering)) == {"Reconciling"}
    assert set(conditions(failed)) == {"Ready", "Stalled"} and conditions(failed)["Ready"]["status"] == "False"


def test_kstatus_fails_a_rejected_webhook_at_once_and_passes_a_fixed_one(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace)
    missing_secret = [{"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}]
    apply(kubectl, namespace, webhook_manifest("ready", receiver.url("/ready")))
    apply(kubectl, namespace, webhook_manifest("invalid", "https://hooks.example.com:0/in"))
    apply(kubectl, namespace, webhook_manifest("secretless", receiver.url("/s"), headers=missing_secret))

    ready = wait_ready(kubectl, namespace, "ready")
    invalid = wait_for_condition(kubectl, namespace, "webhook/invalid", "Stalled", "True", reason="InvalidURL")
    secretless = wait_for_condition(
        kubectl, namespace, "webhook/secretless", "Stalled", "True", reason="HeaderSecretMissing"
    )

    got = verdicts(ready, invalid, secretless)
    assert got["ready"][0] == "Current"
    assert got["invalid"] == ("Failed", conditions(invalid)["Ready"]["message"])
    assert got["secretless"] == ("Failed", conditions(secretless)["Ready"]["message"])

    apply(kubectl, namespace, webhook_manifest("invalid", receiver.url("/fixed")))
    fixed = wait_ready(kubectl, namespace, "invalid")
    assert "Stalled" not in conditions(fixed)
    assert verdicts(fixed)["invalid"][0] == "Current"
