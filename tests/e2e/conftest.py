"""Fixtures of the kind tests: the operator image, its Helm release, and an HTTPS receiver inside the cluster."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pytest_kind import KindCluster

from devcluster import binaries
from tests.conftest import KIND_CLUSTER_NAME, ROOT, Cluster, KubectlFn
from tests.e2e.kind_helpers import OPERATOR_NAMESPACE, RELEASE, InClusterReceiver, port_forward

NOT_ON_KIND = "end-to-end tests run on kind: pytest tests/e2e --cluster=kind (needs Docker)"
IMAGE = "webhook-operator:e2e"
RECEIVER_NAMESPACE = "e2e-receiver"
RECEIVER = "e2e-receiver"
RECEIVER_PORT = 8443
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--cluster") == "kind":
        return
    # Decided at collection, so no fixture (the local control plane above all) is set up for nothing.
    skip = pytest.mark.skip(reason=NOT_ON_KIND)
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


@pytest.fixture(scope="session")
def kind_cluster(cluster: Cluster) -> KindCluster:
    """The kind cluster tests/conftest.py created (it skips with the reason when there is no Docker engine)."""
    assert cluster.kind == "kind", "the e2e tests only run with --cluster=kind"
    return KindCluster(KIND_CLUSTER_NAME, kubeconfig=cluster.kubeconfig)


@pytest.fixture(scope="session")
def operator_image(kind_cluster: KindCluster) -> str:
    """The repository's Dockerfile built as webhook-operator:e2e and loaded into the kind node."""
    # The Dockerfile bind-mounts the wheel from the builder stage, which needs BuildKit.
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    run(["docker", "build", "-t", IMAGE, "."], env, timeout=1200, what="docker build")
    kind_cluster.load_docker_image(IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def receiver_tls(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate chain, key) for the receiver: its cluster DNS names, plus 127.0.0.1 for the port-forward."""
    cert = tls_ca.issue_cert(
        f"{RECEIVER}.{RECEIVER_NAMESPACE}.svc",
        f"{RECEIVER}.{RECEIVER_NAMESPACE}.svc.cluster.local",
        "127.0.0.1",
    )
    folder = tmp_path_factory.mktemp("receiver-tls")
    cert.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
    for intermediate in cert.cert_chain_pems[1:]:
        intermediate.write_to_path(str(folder / "tls.crt"), append=True)
    cert.private_key_pem.write_to_path(str(folder / "tls.key"))
    return folder / "tls.crt", folder / "tls.key"


def apply_created(kubectl: KubectlFn, namespace: str, *create_args: str) -> None:
    """``kubectl create ...`` made idempotent, so a kind cluster kept from an interrupted run can be reused."""
    manifest = kubectl("create", *create_args, "-n", namespace, "--dry-run=client", "-o", "yaml").stdout
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)


def ensure_namespace(kubectl: KubectlFn, name: str) -> None:
    kubectl("apply", "-f", "-", input=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")


@pytest.fixture(scope="session")
def operator_release(
    kind_cluster: KindCluster, operator_image: str, kubectl: KubectlFn, kube_env: dict[str, str], ca_bundle: Path
) -> Iterator[str]:
    """The chart installed with the e2e image and values; yields the release namespace once the pod is Ready."""
    helm = str(binaries.find("helm"))
    ensure_namespace(kubectl, OPERATOR_NAMESPACE)
    # The operator trusts the receiver's CA through the chart's caBundle value (see manifests/values.yaml).
    apply_created(kubectl, OPERATOR_NAMESPACE, "configmap", "e2e-receiver-ca", f"--from-file=ca.crt={ca_bundle}")
    install = [
        helm, "upgrade", "--install", RELEASE, str(ROOT / "charts" / "webhook-operator"),
        "--namespace", OPERATOR_NAMESPACE,
        "--values", str(HERE / "manifests" / "values.yaml"),
        "--wait", "--timeout", "5m",
    ]  # fmt: skip
    try:
        run(install, kube_env, timeout=400, what="helm install")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(kubectl, OPERATOR_NAMESPACE)}") from None
    yield OPERATOR_NAMESPACE
    subprocess.run([helm, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE], env=kube_env, check=False)


@pytest.fixture(scope="session")
def cluster_receiver(
    operator_release: str,
    kubectl: KubectlFn,
    kube_env: dict[str, str],
    receiver_tls: tuple[Path, Path],
    ca_bundle: Path,
) -> Iterator[InClusterReceiver]:
    """tests/e2e/receiver/server.py running as a Deployment behind a Service, read through a port-forward."""
    cert, key = receiver_tls
    ns = RECEIVER_NAMESPACE
    ensure_namespace(kubectl, ns)
    apply_created(kubectl, ns, "secret", "tls", "e2e-receiver-tls", f"--cert={cert}", f"--key={key}")
    script = HERE / "receiver" / "server.py"
    apply_created(kubectl, ns, "configmap", "e2e-receiver-script", f"--from-file=server.py={script}")
    kubectl("apply", "-n", ns, "-f", str(HERE / "manifests" / "receiver.yaml"))
    # The kind node pulls python:3.11-slim on first use; 110 s stays below the kubectl fixture's 120 s limit.
    waited = kubectl(
        "wait", "-n", ns, "--for=condition=Available", f"deployment/{RECEIVER}", "--timeout=110s", check=False
    )
    if waited.returncode != 0:
        raise AssertionError(f"the receiver did not become available: {waited.stderr}\n{diagnostics(kubectl, ns)}")
    tls = ssl.create_default_context(cafile=str(ca_bundle))
    with port_forward(kube_env, ns, f"svc/{RECEIVER}", RECEIVER_PORT) as local_port:
        yield InClusterReceiver(ns, RECEIVER, RECEIVER_PORT, local_port, tls)
    kubectl("delete", "namespace", ns, "--wait=false", check=False)
