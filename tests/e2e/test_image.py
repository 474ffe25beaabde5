"""The built image run the way the chart runs it, outside Kubernetes: a uid without a passwd entry,
a read-only root file system, no POD_NAME. It used to die at start-up (kopf asked getpass for a
user name, which has none for uid 65532)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import docker
from tests.conftest import Cluster, KubectlFn
from tests.support.kube_helpers import apply, create, event_manifest, wait_event_final, wait_ready, webhook_manifest
from tests.support.operator_process import free_port
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture
def container(operator_image: str, cluster: Cluster, tmp_path: Path, ca_bundle: Path) -> Iterator[tuple[str, int]]:
    # The container user (65532) must be able to read what is mounted.
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(cluster.kubeconfig, kubeconfig)
    shutil.copy(ca_bundle, tmp_path / "ca.pem")
    for path in (kubeconfig, tmp_path / "ca.pem"):
        path.chmod(0o644)
    tmp_path.chmod(0o755)
    name = f"wo-image-{uuid.uuid4().hex[:8]}"
    health_port, metrics_port = free_port(), free_port()
    docker.docker(
        "run", "-d", "--name", name, "--network", "host", "--user", "65532:65532", "--read-only",
        "--tmpfs", "/tmp", "-v", f"{tmp_path}:/config:ro", "-e", "KUBECONFIG=/config/kubeconfig",
        operator_image, "--dev", "--bind-address", "127.0.0.1", "--ca-bundle", "/config/ca.pem",
        "--health-port", str(health_port), "--metrics-port", str(metrics_port), "--no-leader-election",
    )  # fmt: skip
    try:
        yield name, health_port
    finally:
        subprocess.run([docker.client(), "rm", "-f", name], capture_output=True, check=False)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_image_starts_as_a_uid_without_passwd_entry_on_a_read_only_root_and_delivers(
    container: tuple[str, int], kubectl: KubectlFn, namespace: str, receiver: Receiver
) -> None:
    name, health_port = container
    deadline = time.monotonic() + 60
    while not healthy(health_port):
        state = subprocess.run(
            [docker.client(), "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
        )
        logs = subprocess.run([docker.client(), "logs", name], capture_output=True, text=True)
        assert state.stdout.strip() == "true", f"the container exited:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        assert time.monotonic() < deadline, f"no /healthz after 60 s:\n{logs.stderr[-3000:]}"
        time.sleep(0.5)
    apply(kubectl, namespace, webhook_manifest("from-image", receiver.url("/image")))
    wait_ready(kubectl, namespace, "from-image", timeout=60)
    event = create(kubectl, namespace, event_manifest("User.Created", {"id": "from-image"}))
    assert wait_event_final(kubectl, namespace, event, timeout=60)["status"]["phase"] == "Delivered"
