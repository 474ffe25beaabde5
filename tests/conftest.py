"""Fixtures for real things: the cluster, a namespace per test, HTTPS receivers, the operator process."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devcluster.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
KubectlFn = Callable[..., subprocess.CompletedProcess[str]]
KIND_CLUSTER_NAME = "webhook-operator-test"
KIND_NODE_IMAGE = "kindest/node:v1.32.2"

pytest_plugins = ["tests.support.fixtures", "tests.support.nats"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        choices=["local", "existing", "kind"],
        default=os.environ.get("WEBHOOK_OPERATOR_TEST_CLUSTER", "local"),
        help="local: start the local control plane (default); existing: use $KUBECONFIG; kind: pytest-kind",
    )


@dataclass(frozen=True)
class Cluster:
    kind: str
    kubeconfig: Path


def docker_unavailable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "kind needs a Docker engine and `docker` is not installed here"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "kind needs a Docker engine and none is running here (`docker info` failed)"
    return None


def _install_crds(kubeconfig: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    names = [f"crd/{p.name.removesuffix('.yaml')}" for p in sorted(CRDS.glob("*.yaml"))]
    for args in (
        ["apply", "--server-side", "-f", str(CRDS)],
        ["wait", "--for=condition=Established", "--timeout=60s", *names],
    ):
        result = subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"installing the CRDs failed: kubectl {' '.join(args)}:\n{result.stderr}")
    # Established is not yet servable: the new resources' storage may still answer 429 for a moment.
    deadline = time.monotonic() + 60
    while (
        subprocess.run(
            ["kubectl", "get", "webhooks,webhookevents", "-A"], env=env, capture_output=True, check=False
        ).returncode
        != 0
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("the CRDs are Established but their resources cannot be listed after 60s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The Kubernetes API the suite runs against, with the CRDs from crds/ installed and Established."""
    mode = request.config.getoption("--cluster")
    if mode == "existing":
        kubeconfig = Path(os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config")))
        _install_crds(kubeconfig)
        yield Cluster("existing", kubeconfig)
        return
    if mode == "kind":
        reason = docker_unavailable_reason()
        if reason:
            pytest.skip(reason)
        from pytest_kind import KindCluster

        # The CRDs use selectableFields (Kubernetes >= 1.31); pin a node image new enough.
        kind = KindCluster(KIND_CLUSTER_NAME, image=KIND_NODE_IMAGE)
        kind.create()
        try:
            _install_crds(Path(kind.kubeconfig_path))
            yield Cluster("kind", Path(kind.kubeconfig_path))
        finally:
            kind.delete()
        return
    # A state folder of its own, so a developer's `make dev` cluster is never touched. Concurrent
    # pytest runs share it: starting is serialised by one lock, every run holds a shared lock on
    # another while it uses the cluster, and the last one out stops it.
    plane = ControlPlane(ROOT / ".cluster-test")
    with open(ROOT / ".cluster-test.lock", "w") as users:
        with open(ROOT / ".cluster-test.start.lock", "w") as starting:
            fcntl.flock(starting, fcntl.LOCK_EX)
            fcntl.flock(users, fcntl.LOCK_SH)
            plane.up()
            _install_crds(plane.kubeconfig)
        try:
            yield Cluster("local", plane.kubeconfig)
        finally:
            if not os.environ.get("WEBHOOK_OPERATOR_KEEP_TEST_CLUSTER"):
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another run still uses it
                else:
                    plane.down(quiet=True)


@pytest.fixture(scope="session")
def kube_env(cluster: Cluster) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}


@pytest.fixture(scope="session")
def kubectl(kube_env: dict[str, str]) -> KubectlFn:
    """Run kubectl against the test cluster: kubectl("get", "ns", input=None, check=True)."""

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", *args], input=input, env=kube_env, capture_output=True, text=True, check=False, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    return run


@pytest.fixture
def namespace(kubectl: KubectlFn, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)
