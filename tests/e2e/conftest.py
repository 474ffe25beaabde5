"""Fixtures of the in-cluster tests: the operator image, its Helm release, and an HTTPS receiver Pod.

They run where pods can run: on a real kubelet node beside the local control plane (the
default, `--cluster=local`; needs root and Debian's container packages, which `make test`
installs), or on kind (`--cluster=kind`, needs Docker and an image registry).
"""

from __future__ import annotations

import fcntl
import json
import os
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from devcluster import binaries, docker, image, node, system
from devcluster.controlplane import ControlPlane
from tests.conftest import KIND_CLUSTER_NAME, ROOT, Cluster, KubectlFn
from tests.e2e.in_cluster import OPERATOR_NAMESPACE, RELEASE, InClusterReceiver, port_forward
from tests.support.kube_helpers import wait_until

IMAGE = "webhook-operator:dev"
# One per run: a namespace of an earlier run may still be terminating.
RECEIVER_NAMESPACE = f"e2e-receiver-{uuid.uuid4().hex[:6]}"
RECEIVER = "e2e-receiver"
RECEIVER_PORT = 8443
HERE = Path(__file__).resolve().parent


def node_unavailable_reason() -> str | None:
    """Why a kubelet node cannot run here, or None."""
    if os.geteuid() != 0:
        return (
            "the in-cluster tests run pods on a real kubelet node, which needs root (containerd, a bridge, "
            "iptables); run them as root, or on kind: pytest tests/e2e --cluster=kind"
        )
    missing = system.missing()
    if missing:
        return (
            f"the in-cluster tests need Debian packages that are missing: {' '.join(missing)} "
            "(make test installs them as root)"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = config.getoption("--cluster")
    if mode == "kind":
        return
    # Decided at collection, so no fixture (the node above all) is set up for nothing.
    if mode == "existing":
        reason: str | None = "in-cluster tests need to load the image into the cluster: use --cluster=local or kind"
    else:
        reason = node_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(skip)


def run(args: list[str], env: dict[str, str], timeout: float, what: str) -> None:
    """Run a build or install step; on failure show its output, which is where the reason is."""
    result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        raise AssertionError(f"{what} failed ({result.returncode}): {' '.join(args)}\n{output}")


def diagnostics(kubectl: KubectlFn, namespace: str) -> str:
    """What a person would look at when pods in ``namespace`` do not come up."""
    describe = kubectl("describe", "pods", "-n", namespace, check=False)
    logs = kubectl(
        "logs", "-n", namespace, "--all-containers", "--tail=100", "-l", "app.kubernetes.io/name", check=False
    )
    return f"--- kubectl describe pods\n{describe.stdout[-4000:]}\n--- kubectl logs\n{logs.stdout}{logs.stderr}"


@dataclass(frozen=True)
class Platform:
    """Where the pods run, and how an image built here gets there."""

    name: str
    load_image: Callable[[str], None]


@pytest.fixture(scope="session")
def platform(cluster: Cluster) -> Platform:
    if cluster.kind == "kind":
        from pytest_kind import KindCluster

        kind = KindCluster(KIND_CLUSTER_NAME, kubeconfig=cluster.kubeconfig)
        return Platform("kind", kind.load_docker_image)
    assert cluster.kind == "local", "in-cluster tests run on the local node or on kind"
    plane = ControlPlane(ROOT / ".cluster-test")
    # Concurrent runs share the test cluster (tests/conftest.py): one of them starts the node.
    with open(ROOT / ".cluster-test.start.lock", "w") as starting:
        fcntl.flock(starting, fcntl.LOCK_EX)
        local = node.Node(plane)
        local.up()
    # The node goes with the control plane when the last run stops it (ControlPlane.down).
    return Platform("node", lambda ref: image.import_into_node([ref], local.containerd_address))


@pytest.fixture(scope="session")
def operator_image(platform: Platform) -> str:
    """The repository's Dockerfile built as webhook-operator:dev (`make image`) and loaded where pods run."""
    try:
        image.build_project(IMAGE)
    except docker.DockerUnavailable as exc:
        raise AssertionError(f"make image failed: {exc}") from None
    platform.load_image(IMAGE)
    return IMAGE


def apply_created(kubectl: KubectlFn, namespace: str, *create_args: str) -> None:
    """``kubectl create ...`` made idempotent, so a cluster kept from an interrupted run can be reused."""
    manifest = kubectl("create", *create_args, "-n", namespace, "--dry-run=client", "-o", "yaml").stdout
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def ensure_namespace(kubectl: KubectlFn, name: str) -> None:
    kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")


def helm_install(kube_env: dict[str, str], kubectl: KubectlFn, *extra: str) -> None:
    helm = str(binaries.find("helm"))
    install = [
        helm, "upgrade", "--install", RELEASE, str(ROOT / "charts" / "webhook-operator"),
        "--namespace", OPERATOR_NAMESPACE,
        "--values", str(HERE / "manifests" / "values.yaml"),
        *extra,
        "--wait", "--timeout", "3m",
    ]  # fmt: skip
    try:
        run(install, kube_env, timeout=240, what="helm upgrade --install")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(kubectl, OPERATOR_NAMESPACE)}") from None


# Module scope: the release (a cluster-wide operator) must be gone before the integration tests,
# which run their own operator processes against the same cluster, start.
@pytest.fixture(scope="module")
def operator_release(
    platform: Platform, operator_image: str, kubectl: KubectlFn, kube_env: dict[str, str], ca_bundle: Path
) -> Iterator[str]:
    """The chart installed with the built image and values; yields the release namespace once the pod is Ready."""
    ensure_namespace(kubectl, OPERATOR_NAMESPACE)
    # The operator trusts the receiver's CA through the chart's caBundle value (see manifests/values.yaml).
    apply_created(kubectl, OPERATOR_NAMESPACE, "configmap", "e2e-receiver-ca", f"--from-file=ca.crt={ca_bundle}")
    helm_install(kube_env, kubectl)
    yield OPERATOR_NAMESPACE
    helm = str(binaries.find("helm"))
    subprocess.run([helm, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait"], env=kube_env, check=False)
    # Pods shut down gracefully after their Deployment is gone; wait until none delivers any more.
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=webhook-operator"
    kubectl("wait", "--for=delete", "pod", "-l", selector, "-n", OPERATOR_NAMESPACE, "--timeout=90s", check=False)


def _answers(url: str, tls: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=tls, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def issue_receiver_tls(tls_ca: trustme.CA, folder: Path, cluster_ip: str) -> tuple[Path, Path]:
    """(certificate chain, key) for the receiver: its Service IP and DNS names, 127.0.0.1 for the port-forward."""
    cert = tls_ca.issue_cert(
        cluster_ip,
        f"{RECEIVER}.{RECEIVER_NAMESPACE}.svc",
        f"{RECEIVER}.{RECEIVER_NAMESPACE}.svc.cluster.local",
        "127.0.0.1",
    )
    cert.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
    for intermediate in cert.cert_chain_pems[1:]:
        intermediate.write_to_path(str(folder / "tls.crt"), append=True)
    cert.private_key_pem.write_to_path(str(folder / "tls.key"))
    return folder / "tls.crt", folder / "tls.key"


@pytest.fixture(scope="module")
def cluster_receiver(
    platform: Platform,
    operator_release: str,
    operator_image: str,
    kubectl: KubectlFn,
    kube_env: dict[str, str],
    tls_ca: trustme.CA,
    ca_bundle: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[InClusterReceiver]:
    """tests/e2e/receiver/server.py as a Deployment behind a Service, read through a port-forward.

    Webhooks address it by the Service's IP: the local node runs no cluster DNS.
    """
    ns = RECEIVER_NAMESPACE
    ensure_namespace(kubectl, ns)
    manifests = (HERE / "manifests" / "receiver.yaml").read_text().replace("IMAGE_PLACEHOLDER", operator_image)
    service, deployment = manifests.split("\n---\n", 1)
    kubectl("apply", "-n", ns, "-f", "-", input=service)
    cluster_ip = json.loads(kubectl("get", "service", RECEIVER, "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]
    cert, key = issue_receiver_tls(tls_ca, tmp_path_factory.mktemp("receiver-tls"), cluster_ip)
    apply_created(kubectl, ns, "secret", "tls", "e2e-receiver-tls", f"--cert={cert}", f"--key={key}")
    script = HERE / "receiver" / "server.py"
    apply_created(kubectl, ns, "configmap", "e2e-receiver-script", f"--from-file=server.py={script}")
    kubectl("apply", "-n", ns, "-f", "-", input=deployment)
    waited = kubectl(
        "wait", "-n", ns, "--for=condition=Available", f"deployment/{RECEIVER}", "--timeout=110s", check=False
    )
    if waited.returncode != 0:
        raise AssertionError(f"the receiver did not become available: {waited.stderr}\n{diagnostics(kubectl, ns)}")
    tls = ssl.create_default_context(cafile=str(ca_bundle))
    if platform.name == "node":
        # Available is not yet routable: kube-proxy programs the Service's endpoint a moment later.
        # On the local node this machine reaches Service IPs as the pods do.
        wait_until(
            lambda: _answers(f"https://{cluster_ip}:{RECEIVER_PORT}/healthz", tls),
            timeout=60, what="the receiver Service to route",
        )  # fmt: skip
    with port_forward(kube_env, ns, f"svc/{RECEIVER}", RECEIVER_PORT) as local_port:
        yield InClusterReceiver(ns, cluster_ip, RECEIVER_PORT, local_port, tls)
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed in-cluster test shows the operator pods' logs: that is where the reason usually is."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed or not item.get_closest_marker("e2e"):
        return
    env = item.funcargs.get("kube_env") if hasattr(item, "funcargs") else None
    if not isinstance(env, dict):
        return
    logs = subprocess.run(
        ["kubectl", "logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=webhook-operator",
         "--all-containers", "--prefix", "--tail=200"],
        env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    report.sections.append(("operator logs", logs.stdout + logs.stderr))
