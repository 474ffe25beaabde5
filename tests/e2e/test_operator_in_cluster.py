"""The operator as users install it (the image, the Helm chart) on a real node, delivering to an HTTPS Service.

Runs on the local kubelet node by default and on kind with --cluster=kind.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from devcluster import binaries
from tests.conftest import ROOT, KubectlFn
from tests.e2e.conftest import helm_install, run
from tests.e2e.in_cluster import (
    METRICS_PORT,
    METRICS_SERVICE,
    OPERATOR_NAMESPACE,
    RELEASE,
    InClusterReceiver,
    http_get,
    port_forward,
    printed_columns,
)
from tests.support.kube_helpers import (
    Manifest,
    apply,
    condition,
    create,
    event_manifest,
    metric_samples,
    metric_value,
    signing_keys,
    verify_signatures,
    wait_event_final,
    wait_for_object,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.unit.test_argocd_health import WEBHOOK_LUA, run_health

# The first test also waits for the node, the image build and the Helm release.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXAMPLES = ROOT / "examples"


def example(relative: str) -> Manifest:
    """An object from examples/, without its namespace so that it lands in the test's own."""
    manifest: Manifest = yaml.safe_load((EXAMPLES / relative).read_text())
    manifest["metadata"].pop("namespace", None)
    return manifest


def operator_pods(kubectl: KubectlFn) -> list[Manifest]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=webhook-operator"
    pods: list[Manifest] = json.loads(
        kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-l", selector, "-o", "json").stdout
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def leader_pod(kubectl: KubectlFn) -> str:
    """The pod that holds the chart's Lease (its holder identity is the pod name plus a suffix)."""

    def holder() -> str | None:
        lease = kubectl("get", "lease", RELEASE, "-n", OPERATOR_NAMESPACE, "-o", "json", check=False)
        if lease.returncode != 0:
            return None
        identity = json.loads(lease.stdout)["spec"].get("holderIdentity") or ""
        live = {p["metadata"]["name"] for p in operator_pods(kubectl)}
        name = identity.rsplit("_", 1)[0]
        return name if name in live else None

    return wait_until(holder, timeout=60, interval=0.5, what="a live operator pod holding the Lease")


def scrape_operator(kube_env: dict[str, str], target: str = f"svc/{METRICS_SERVICE}") -> str:
    """/metrics as Prometheus scrapes it: through the chart's metrics Service, or of one pod."""
    with port_forward(kube_env, OPERATOR_NAMESPACE, target, METRICS_PORT) as local_port:
        return http_get(f"http://127.0.0.1:{local_port}/metrics")


def scrape_operator_pod(kubectl: KubectlFn, pod: str) -> str:
    """One pod's /metrics through the API server's pod proxy."""
    return kubectl(
        "get", "--raw", f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods/{pod}:{METRICS_PORT}/proxy/metrics"
    ).stdout


def deliveries_total(metrics: str, namespace: str, webhook: str, outcome: str) -> float:
    """webhook_operator_deliveries_total of one webhook, summed over its events."""
    return sum(
        value
        for labels, value in metric_samples(metrics, "webhook_operator_deliveries_total")
        if labels.get("namespace") == namespace
        and labels.get("webhook") == webhook
        and labels.get("outcome") == outcome
    )


def wait_for_health(kubectl: KubectlFn, namespace: str, webhook: str, requests: int) -> Manifest:
    """The Webhook once its health window counts ``requests`` and its Healthy condition reflects them."""

    def counted(obj: Manifest) -> bool:
        healthy = condition(obj, "Healthy")
        health: dict[str, Any] = (obj.get("status") or {}).get("health") or {}
        return health.get("requests") == requests and healthy is not None and healthy.get("status") != "Unknown"

    return wait_for_object(
        kubectl, namespace, f"webhook/{webhook}", counted, timeout=60, what=f"health to count {requests} requests"
    )


def test_chart_runs_two_ready_operator_pods_from_the_built_image_one_of_them_leading(
    kubectl: KubectlFn, operator_release: str
) -> None:
    pods = operator_pods(kubectl)
    assert len(pods) == 2, f"the chart's default is two replicas, found {[p['metadata']['name'] for p in pods]}"
    for pod in pods:
        [container] = pod["spec"]["containers"]
        assert container["image"] == "webhook-operator:dev"
        # As the chart runs it: a uid without a passwd entry, a read-only root file system.
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", pod["status"]
        [container_status] = pod["status"]["containerStatuses"]
        assert container_status["restartCount"] == 0, "the operator restarted; see `kubectl logs --previous`"
    leader = leader_pod(kubectl)
    gauges = {
        pod["metadata"]["name"]: metric_value(
            scrape_operator_pod(kubectl, pod["metadata"]["name"]), "webhook_operator_leader"
        )
        for pod in pods
    }
    assert gauges == {name: (1 if name == leader else 0) for name in gauges}


def test_metrics_are_served_through_the_metrics_service(kube_env: dict[str, str], operator_release: str) -> None:
    metrics = scrape_operator(kube_env)
    assert "# TYPE webhook_operator_deliveries_total counter" in metrics
    assert "# TYPE webhook_operator_delivery_duration_seconds histogram" in metrics


def test_example_events_reach_the_in_cluster_receiver_signed_and_the_webhook_turns_healthy(
    kubectl: KubectlFn, kube_env: dict[str, str], namespace: str, cluster_receiver: InClusterReceiver
) -> None:
    # The example Webhook as a GitOps repository holds it, pointed at the receiver Service.
    hook = example("webhooks/billing-sync.yaml")
    hook["spec"]["url"] = cluster_receiver.url(f"/{namespace}/identity")
    apply(kubectl, namespace, hook)
    wait_ready(kubectl, namespace, "billing-sync", timeout=60)

    names = [create(kubectl, namespace, example(f"events/{path.name}")) for path in sorted(EXAMPLES.glob("events/*"))]
    assert len(names) == 2, "examples/events/ holds a User.Created and an Organization.* event"
    events = [wait_event_final(kubectl, namespace, name, timeout=60) for name in names]
    for event in events:
        assert event["status"]["phase"] == "Delivered", event["status"]
        [delivery] = event["status"]["deliveries"]
        assert (delivery["webhook"], delivery["outcome"], delivery["statusCode"], delivery["attempts"]) == (
            "billing-sync",
            "Succeeded",
            200,
            1,
        )

    requests = cluster_receiver.wait_for(len(events), f"/{namespace}/")
    assert len(requests) == len(events), "one POST per event, no duplicates"
    signing_key, standard_secret = signing_keys(kubectl, namespace, "billing-sync")
    by_event_id: dict[str, tuple[Manifest, dict[str, str]]] = {}
    for request in requests:
        verify_signatures(request.body, request.headers, signing_key, standard_secret)
        assert request.headers["x-team"] == "billing"
        assert request.headers["content-type"] == "application/json"
        body = request.json()
        assert body["hookId"] == f"{namespace}/billing-sync"
        by_event_id[body["eventId"]] = (body, request.headers)
    for event in events:
        body, headers = by_event_id[event["metadata"]["uid"]]
        assert (body["event"], body["data"]) == (event["spec"]["event"], event["spec"]["data"])
        assert headers["webhook-id"] == event["status"]["deliveries"][0]["id"]

    webhook = wait_for_health(kubectl, namespace, "billing-sync", requests=2)
    health = webhook["status"]["health"]
    assert (health["succeeded"], health["failed"], health["successRate"], health["state"]) == (
        2,
        0,
        "100.00%",
        "Healthy",
    )
    columns = printed_columns(kubectl("get", "webhook", "billing-sync", "-n", namespace).stdout)
    assert {k: columns[k] for k in ("HEALTH", "SUCCESS", "REQUESTS", "READY")} == {
        "HEALTH": "Healthy",
        "SUCCESS": "100.00%",
        "REQUESTS": "2",
        "READY": "True",
    }
    assert run_health(WEBHOOK_LUA, webhook) == {"status": "Healthy", "message": "100.00% of 2 requests in 24h"}

    def scraped_both() -> str | None:
        # Deliveries are counted by the replica that made them: the Lease holder.
        metrics = scrape_operator(kube_env, f"pod/{leader_pod(kubectl)}")
        return metrics if deliveries_total(metrics, namespace, "billing-sync", "success") == 2 else None

    metrics = wait_until(scraped_both, timeout=30, interval=1, what="deliveries_total to count both deliveries")
    assert metric_value(metrics, "webhook_operator_webhook_ready", namespace=namespace, webhook="billing-sync") == 1


def test_503_twice_then_200_in_cluster_is_one_delivery_with_three_attempts(
    kubectl: KubectlFn, namespace: str, cluster_receiver: InClusterReceiver
) -> None:
    # The receiver answers 503 to the first two POSTs to a URL with ?fail=2.
    apply(kubectl, namespace, webhook_manifest("flaky", cluster_receiver.url(f"/{namespace}/flaky?fail=2")))
    wait_ready(kubectl, namespace, "flaky", timeout=60)

    name = create(kubectl, namespace, event_manifest("User.Created", {"id": "u_503"}))
    event = wait_event_final(kubectl, namespace, name, timeout=60)
    assert event["status"]["phase"] == "Delivered", event["status"]
    [delivery] = event["status"]["deliveries"]
    assert (delivery["outcome"], delivery["attempts"], delivery["statusCode"]) == ("Succeeded", 3, 200)

    requests = cluster_receiver.received(f"/{namespace}/")
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {delivery["id"]}, "retries keep the webhook-id"
    signing_key, standard_secret = signing_keys(kubectl, namespace, "flaky")
    for request in requests:
        verify_signatures(request.body, request.headers, signing_key, standard_secret)

    health = wait_for_health(kubectl, namespace, "flaky", requests=1)["status"]["health"]
    assert (health["requests"], health["succeeded"]) == (1, 1), "a delivery and its retries count once"


def event_list(count: int, event: str) -> str:
    """``count`` WebhookEvents as one List, so a single kubectl call creates them all."""
    items = [event_manifest(event, {"seq": i}) for i in range(count)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def test_operator_pod_deleted_under_load_loses_nothing(
    kubectl: KubectlFn, namespace: str, cluster_receiver: InClusterReceiver
) -> None:
    # 0.2 s per response and 10 at a time per webhook: 150 events take ~3 s, so the pod goes mid-stream.
    count = 150
    apply(kubectl, namespace, webhook_manifest("steady", cluster_receiver.url(f"/{namespace}/steady?delay=0.2")))
    wait_ready(kubectl, namespace, "steady", timeout=60)
    leader = leader_pod(kubectl)

    kubectl("create", "-n", namespace, "-f", "-", input=event_list(count, "User.Created"))
    cluster_receiver.wait_for(5, f"/{namespace}/", timeout=60)
    # The pod that delivers goes: it drains what is in flight, releases the Lease, the standby leads.
    kubectl("delete", "pod", "-n", OPERATOR_NAMESPACE, leader, "--wait=false")
    before = {leader}

    def replaced() -> list[Manifest] | None:
        pods = [p for p in operator_pods(kubectl) if p["metadata"]["name"] not in before]
        ready = [
            p
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return ready or None

    wait_until(replaced, timeout=120, interval=1, what="a new operator pod to be Ready")

    def all_final() -> list[Manifest] | None:
        items: list[Manifest] = json.loads(kubectl("get", "webhookevents", "-n", namespace, "-o", "json").stdout)[
            "items"
        ]
        final = [e for e in items if (e.get("status") or {}).get("phase") in ("Delivered", "Failed", "PartiallyFailed")]
        return items if len(final) == count else None

    events = wait_until(all_final, timeout=180, interval=1, what=f"all {count} events final")
    phases = [e["status"]["phase"] for e in events]
    assert phases.count("Delivered") == count, f"lost or failed: {[p for p in phases if p != 'Delivered']}"
    received = cluster_receiver.received(f"/{namespace}/")
    ids = [r.json()["eventId"] for r in received]
    assert {e["metadata"]["uid"] for e in events} <= set(ids), "every event reached the receiver"
    duplicates = len(ids) - len(set(ids))
    # A graceful hand-over: in-flight attempts finish and are recorded before the Lease is released,
    # so nothing is sent twice (at-least-once would allow the 10 in flight per webhook).
    assert duplicates == 0, f"{duplicates} duplicate deliveries"
    print(f"\nleader pod deleted under load: {count} events, 0 lost, {duplicates} delivered twice")


def test_helm_upgrade_with_changed_values_rolls_out_and_keeps_delivering(
    kubectl: KubectlFn, kube_env: dict[str, str], namespace: str, cluster_receiver: InClusterReceiver
) -> None:
    helm_install(kube_env, kubectl, "--set", "logLevel=debug", "--set", "maxConcurrency=50")
    try:
        pods = operator_pods(kubectl)
        assert len(pods) == 2
        for pod in pods:
            args = pod["spec"]["containers"][0]["args"]
            assert "--log-level=DEBUG" in args and "--max-concurrency=50" in args, args
        apply(kubectl, namespace, webhook_manifest("after-upgrade", cluster_receiver.url(f"/{namespace}/up")))
        wait_ready(kubectl, namespace, "after-upgrade", timeout=60)
        name = create(kubectl, namespace, event_manifest("User.Created", {"id": "after-upgrade"}))
        assert wait_event_final(kubectl, namespace, name, timeout=60)["status"]["phase"] == "Delivered"
    finally:
        helm_install(kube_env, kubectl)  # back to the suite's values for the tests after this one


def test_helm_uninstall_removes_the_operator_and_keeps_crds_webhooks_and_keys(
    kubectl: KubectlFn, kube_env: dict[str, str], namespace: str, cluster_receiver: InClusterReceiver
) -> None:
    apply(kubectl, namespace, webhook_manifest("kept", cluster_receiver.url(f"/{namespace}/kept")))
    wait_ready(kubectl, namespace, "kept", timeout=60)
    helm = str(binaries.find("helm"))
    run([helm, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait"], kube_env, 180, "helm uninstall")
    try:
        # What the README's "Uninstall" section says stays: the CRDs, every Webhook and signing-key Secret.
        kubectl("get", "crd", "webhooks.webhook-operator.io", "webhookevents.webhook-operator.io")
        kubectl("get", "webhook", "kept", "-n", namespace)
        kubectl("get", "secret", "kept-signing-key", "-n", namespace)
        # ... and what goes: the operator and everything the chart rendered for it.
        left = kubectl(
            "get", "deployment,serviceaccount,service,role,rolebinding", "-n", OPERATOR_NAMESPACE,
            "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
        ).stdout.split()  # fmt: skip
        cluster_scoped = kubectl(
            "get", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
        ).stdout.split()
        assert left == [] and cluster_scoped == [], left + cluster_scoped
        assert wait_until(lambda: not operator_pods(kubectl) or None, timeout=60, what="the operator pods to go")
    finally:
        helm_install(kube_env, kubectl)
