"""The chart's rendered manifests on a real API server: server-side dry run, apply, and the RBAC they grant."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from devcluster import binaries
from tests.support.operator_process import OperatorProcess, free_port
from tests.support.receiver import Receiver

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "webhook-operator"
KubectlFn = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return binaries.find("helm")
    except binaries.BinariesUnavailable as exc:
        pytest.skip(f"helm is not available and cannot be built here: {exc}")


class Release:
    """One rendering of the chart into a namespace; cluster-scoped leftovers are removed on cleanup."""

    def __init__(self, helm: Path, kubectl: KubectlFn, namespace: str, tmp: Path) -> None:
        self.helm = helm
        self.kubectl = kubectl
        self.namespace = namespace
        self.tmp = tmp
        # Cluster-scoped names derive from the release name, so it must be unique per test.
        self.name = f"wo{uuid.uuid4().hex[:6]}"
        self.fullname = f"{self.name}-webhook-operator"
        self.applied: list[str] = []

    def render(self, values: dict[str, Any] | None = None) -> str:
        values_file = self.tmp / f"values-{uuid.uuid4().hex[:6]}.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        result = subprocess.run(
            [
                str(self.helm),
                "template",
                self.name,
                str(CHART),
                "--namespace",
                self.namespace,
                "--kube-version",
                binaries.KUBERNETES_VERSION,
                "--values",
                str(values_file),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def dry_run(self, manifest: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=manifest)

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        self.applied.append(manifest)
        return self.kubectl("apply", "--server-side", "-f", "-", input=manifest)

    def cleanup(self) -> None:
        for manifest in reversed(self.applied):
            self.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest, check=False)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        scope = ["-n", namespace] if namespace else []
        result: dict[str, Any] = json.loads(self.kubectl("get", kind, name, *scope, "-o", "json").stdout)
        return result

    def exists(self, kind: str, name: str, namespace: str | None = None) -> bool:
        scope = ["-n", namespace] if namespace else []
        return self.kubectl("get", kind, name, *scope, "-o", "name", check=False).returncode == 0

    def can(self, verb: str, resource: str, namespace: str, subresource: str = "") -> bool:
        """Asks the API server's authorizer whether the chart's ServiceAccount may do this."""
        subject = f"system:serviceaccount:{self.namespace}:{self.fullname}"
        extra = [f"--subresource={subresource}"] if subresource else []
        result = self.kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace, "--as", subject, check=False)
        assert result.stdout.strip() in {"yes", "no"}, result.stderr
        return result.stdout.strip() == "yes"


@pytest.fixture
def release(helm: Path, kubectl: KubectlFn, namespace: str, tmp_path: Path) -> Iterator[Release]:
    rel = Release(helm, kubectl, namespace, tmp_path)
    yield rel
    rel.cleanup()


@pytest.fixture
def other_namespace(kubectl: KubectlFn) -> Iterator[str]:
    name = f"chart-other-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def kinds_in(manifest: str) -> list[tuple[str, str, str | None]]:
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    return [(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs]


def test_default_render_passes_server_side_dry_run_and_applies(release: Release) -> None:
    manifest = release.render()
    dry = release.dry_run(manifest)
    assert "serverside-applied (server dry run)" in dry.stdout
    release.apply(manifest)
    for kind, name, ns in kinds_in(manifest):
        assert release.exists(kind, name, ns), f"{kind} {name} was not created"
    deployment = release.get("deployment", release.fullname, release.namespace)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = release.get("service", f"{release.fullname}-metrics", release.namespace)
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert service["spec"]["ports"][0]["port"] == 8080


def test_cluster_wide_install_grants_exactly_the_documented_rules(release: Release, other_namespace: str) -> None:
    release.apply(release.render())
    for ns in (release.namespace, other_namespace):
        assert release.can("watch", "webhooks.webhook-operator.io", ns)
        assert release.can("patch", "webhooks.webhook-operator.io", ns, "status")
        # blockOwnerDeletion on the signing Secret, under OwnerReferencesPermissionEnforcement.
        assert release.can("update", "webhooks.webhook-operator.io", ns, "finalizers")
        assert release.can("delete", "webhookevents.webhook-operator.io", ns)
        assert release.can("patch", "webhookevents.webhook-operator.io", ns, "status")
        assert release.can("create", "secrets", ns)
        assert release.can("create", "events", ns)
        assert release.can("create", "events.events.k8s.io", ns)
    # What it needs no right to do, it cannot do.
    assert not release.can("delete", "secrets", other_namespace)
    assert not release.can("update", "webhooks.webhook-operator.io", other_namespace)
    assert not release.can("create", "webhookevents.webhook-operator.io", other_namespace)
    assert not release.can("list", "configmaps", other_namespace)
    assert not release.can("create", "customresourcedefinitions.apiextensions.k8s.io", other_namespace)
    # kopf needs namespace names only when it serves a list of namespaces.
    assert not release.can("list", "namespaces", other_namespace)
    # The Lease: in the release namespace only, and no more than leader election needs.
    for verb in ("get", "create", "update"):
        assert release.can(verb, "leases.coordination.k8s.io", release.namespace)
        assert not release.can(verb, "leases.coordination.k8s.io", other_namespace)
    assert not release.can("delete", "leases.coordination.k8s.io", release.namespace)


def test_namespaced_install_creates_roles_in_each_watched_namespace_and_nothing_cluster_wide(
    release: Release, other_namespace: str, kubectl: KubectlFn
) -> None:
    watched = other_namespace
    manifest = release.render({"watchNamespaces": [watched]})
    release.dry_run(manifest)
    release.apply(manifest)
    assert release.exists("role", release.fullname, watched)
    assert release.exists("rolebinding", release.fullname, watched)
    assert not release.exists("clusterrole", release.fullname)
    assert release.exists("clusterrole", f"{release.fullname}-discovery")
    assert release.can("watch", "webhooks.webhook-operator.io", watched)
    assert release.can("create", "secrets", watched)
    assert release.can("watch", "customresourcedefinitions.apiextensions.k8s.io", watched)
    assert release.can("watch", "namespaces", watched)
    # The release namespace itself is not watched, so nothing is granted there.
    assert not release.can("list", "webhooks.webhook-operator.io", release.namespace)
    assert not release.can("get", "secrets", release.namespace)
    args = release.get("deployment", release.fullname, release.namespace)["spec"]["template"]["spec"]["containers"][0]
    assert f"--namespace={watched}" in args["args"]


def monitoring_crds_present(kubectl: KubectlFn) -> bool:
    result = kubectl("api-resources", "--api-group=monitoring.coreos.com", "-o", "name", check=False)
    names = result.stdout.split()
    return "servicemonitors.monitoring.coreos.com" in names and "prometheusrules.monitoring.coreos.com" in names


def test_optional_objects_are_accepted_by_the_api_server(release: Release, kubectl: KubectlFn) -> None:
    values: dict[str, Any] = {
        "networkPolicy": {"enabled": True, "extraEgress": [{"ports": [{"port": 8443, "protocol": "TCP"}]}]},
        "podDisruptionBudget": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "caBundle": {"configMap": {"name": "corp-ca"}},
        "allowCidrs": ["10.20.0.0/16"],
    }
    # ServiceMonitor and PrometheusRule need the Prometheus Operator's CRDs; most test
    # clusters lack them, and then only the rendering is covered (tests/unit/test_chart.py).
    with_monitoring = monitoring_crds_present(kubectl)
    if with_monitoring:
        values["metrics"] = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    manifest = release.render(values)
    release.dry_run(manifest)
    release.apply(manifest)
    assert release.exists("networkpolicy", release.fullname, release.namespace)
    assert release.exists("poddisruptionbudget", release.fullname, release.namespace)
    dashboard = release.get("configmap", f"{release.fullname}-dashboard", release.namespace)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["webhook-operator.json"])
    if with_monitoring:
        assert release.exists("servicemonitor", release.fullname, release.namespace)
        assert release.exists("prometheusrule", release.fullname, release.namespace)


def test_server_side_dry_run_catches_what_the_api_server_rejects(release: Release) -> None:
    # The dry run is a real check, not a formality: a broken object fails it.
    manifest = release.render().replace("type: RollingUpdate", "type: Sideways")
    result = release.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert result.returncode != 0
    assert "Sideways" in result.stderr


def token_kubeconfig(release: Release, kube_env: dict[str, str], path: Path) -> Path:
    """A kubeconfig holding nothing but a token of the chart's ServiceAccount."""
    admin = json.loads(release.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = admin["clusters"][0]["cluster"]
    ca_data = cluster.get("certificate-authority-data")
    if ca_data is None:
        ca_file = Path(cluster["certificate-authority"])
        if not ca_file.is_absolute():
            ca_file = Path(kube_env["KUBECONFIG"]).parent / ca_file
        ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    token = release.kubectl("create", "token", release.fullname, "-n", release.namespace, "--duration=10m").stdout
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cluster["server"], "certificate-authority-data": ca_data}}],
        "users": [{"name": "operator", "user": {"token": token.strip()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.3)


def test_operator_with_only_the_charts_rbac_does_its_whole_job_without_a_forbidden_request(
    release: Release,
    kube_env: dict[str, str],
    receiver: Receiver,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    ns = release.namespace
    release.apply(release.render({"watchNamespaces": [ns]}))
    kubeconfig = token_kubeconfig(release, kube_env, tmp_path / "operator.kubeconfig")
    args = ["--namespace", ns, "--ca-bundle", str(ca_bundle), "--allow-cidr", "127.0.0.0/8"]
    args += ["--leader-election-namespace", ns]  # what POD_NAMESPACE says in the pod
    operator = OperatorProcess(kubeconfig, [*args, "--health-flush-interval", "0.5s"], tmp_path / "operator.log")
    operator.start()
    try:
        webhook = {
            "apiVersion": "webhook-operator.io/v1alpha1",
            "kind": "Webhook",
            "metadata": {"name": "rbac-probe", "namespace": ns},
            "spec": {"url": receiver.url("/hook"), "events": ["User.Created"]},
        }
        release.kubectl("apply", "-f", "-", input=json.dumps(webhook))
        release.kubectl("wait", "--for=condition=Ready", "webhook/rbac-probe", "-n", ns, "--timeout=30s")
        # Signing-key Secret created.
        assert release.exists("secret", "rbac-probe-signing-key", ns)

        # An event is watched, delivered, and its status patched.
        event = {
            "apiVersion": "webhook-operator.io/v1alpha1",
            "kind": "WebhookEvent",
            "metadata": {"name": "rbac-event", "namespace": ns},
            "spec": {"event": "User.Created", "data": {"id": "u1"}},
        }
        release.kubectl("apply", "-f", "-", input=json.dumps(event))
        receiver.wait_for(1, "/hook")
        wait_until(
            "the event is Delivered",
            lambda: release.get("webhookevent", "rbac-event", ns).get("status", {}).get("phase") == "Delivered",
        )

        # Test payload and key rotation: status patches, a Secret patch and Kubernetes Events.
        release.kubectl(
            "annotate",
            "webhook/rbac-probe",
            "-n",
            ns,
            "webhook-operator.io/test-requested-at=t1",
            "webhook-operator.io/rotate-key-requested-at=r1",
        )

        def actions_reported() -> bool:
            status = release.get("webhook", "rbac-probe", ns).get("status", {})
            return bool(
                status.get("lastTest", {}).get("completedAt") and status.get("keyRotation", {}).get("rotatedAt")
            )

        wait_until("lastTest and keyRotation are reported", actions_reported)
        wait_until(
            "a Kubernetes Event is recorded",
            lambda: bool(json.loads(release.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]),
        )

        # A deleted signing-key Secret is noticed through the watch and generated anew.
        def signing_key_uid() -> str | None:
            found = release.kubectl(
                "get", "secret", "rbac-probe-signing-key", "-n", ns, "-o", "jsonpath={.metadata.uid}", check=False
            )
            return found.stdout.strip() or None if found.returncode == 0 else None

        old_uid = signing_key_uid()
        assert old_uid
        release.kubectl("delete", "secret", "rbac-probe-signing-key", "-n", ns)
        wait_until("the signing key is regenerated", lambda: signing_key_uid() not in (None, old_uid))
    finally:
        operator.stop()
    log = operator.log()
    forbidden = [line for line in log.splitlines() if "forbidden" in line.lower() or " 403" in line]
    assert forbidden == [], "\n".join(forbidden[:10])


def test_ingress_with_only_the_charts_rbac_reviews_publishers_and_creates_their_events(
    release: Release,
    kube_env: dict[str, str],
    receiver: Receiver,
    tls_ca: trustme.CA,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    ns = release.namespace
    manifest = release.render({"watchNamespaces": [ns], "ingress": {"enabled": True, "tls": {"secretName": "tls"}}})
    release.dry_run(manifest)
    release.apply(manifest)
    assert release.exists("service", f"{release.fullname}-ingress", ns)
    assert release.can("create", "tokenreviews.authentication.k8s.io", ns)
    assert release.can("create", "subjectaccessreviews.authorization.k8s.io", ns)
    assert release.can("create", "webhookevents.webhook-operator.io", ns)
    assert not release.can("create", "localsubjectaccessreviews.authorization.k8s.io", ns)

    # A publisher allowed to create WebhookEvents in the namespace, and one that is not.
    for name in ("publisher", "stranger"):
        release.kubectl("create", "serviceaccount", name, "-n", ns)
    release.kubectl(
        "create", "role", "publish", "--verb=create", "--resource=webhookevents.webhook-operator.io", "-n", ns
    )
    release.kubectl("create", "rolebinding", "publish", "--role=publish", f"--serviceaccount={ns}:publisher", "-n", ns)
    tokens = {n: release.kubectl("create", "token", n, "-n", ns).stdout.strip() for n in ("publisher", "stranger")}

    cert = tls_ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    port = free_port()
    kubeconfig = token_kubeconfig(release, kube_env, tmp_path / "operator.kubeconfig")
    args = ["--namespace", ns, "--ca-bundle", str(ca_bundle), "--allow-cidr", "127.0.0.0/8"]
    args += ["--leader-election-namespace", ns]  # what POD_NAMESPACE says in the pod
    ingress = ["--ingress-port", str(port), "--ingress-tls-cert", str(cert_path), "--ingress-tls-key", str(key_path)]
    operator = OperatorProcess(kubeconfig, [*args, *ingress], tmp_path / "operator.log").start()
    try:
        webhook = {
            "apiVersion": "webhook-operator.io/v1alpha1",
            "kind": "Webhook",
            "metadata": {"name": "ingress-probe", "namespace": ns},
            "spec": {"url": receiver.url("/hook"), "events": ["User.Created"]},
        }
        release.kubectl("apply", "-f", "-", input=json.dumps(webhook))
        release.kubectl("wait", "--for=condition=Ready", "webhook/ingress-probe", "-n", ns, "--timeout=30s")
        url = f"https://127.0.0.1:{port}/v1/namespaces/{ns}/events"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_bundle)), timeout=30) as client:
            event = {"event": "User.Created", "data": {"id": "u1"}}
            denied = client.post(url, json=event, headers={"Authorization": f"Bearer {tokens['stranger']}"})
            assert denied.status_code == 403, denied.text
            accepted = client.post(url, json=event, headers={"Authorization": f"Bearer {tokens['publisher']}"})
            assert accepted.status_code == 202, accepted.text
        (request,) = receiver.wait_for(1, "/hook")
        assert json.loads(request.body)["eventId"] == accepted.json()["eventId"]
    finally:
        operator.stop()
    log = operator.log()
    forbidden = [line for line in log.splitlines() if "forbidden" in line.lower() or " 403" in line]
    assert forbidden == [], "\n".join(forbidden[:10])
