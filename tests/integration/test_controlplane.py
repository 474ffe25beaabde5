"""The local control plane is a real one: schema validation, garbage collection, namespaces, RBAC, tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devcluster.controlplane import ControlPlane
from tests.conftest import Cluster, KubectlFn

pytestmark = pytest.mark.integration

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.cp-test.example.com}
spec:
  group: cp-test.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1, maximum: 10}
"""


def _wait(predicate: object, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_api_server_is_ready_and_reports_the_pinned_release(kubectl: KubectlFn, cluster: Cluster) -> None:
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    if cluster.kind == "local":
        from devcluster.binaries import KUBERNETES_VERSION

        version = json.loads(kubectl("get", "--raw", "/version").stdout)
        assert version["gitVersion"] == KUBERNETES_VERSION


def test_crd_becomes_established_and_schema_violations_are_rejected(kubectl: KubectlFn, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=WIDGET_CRD)
    kubectl("wait", "--for=condition=Established", "crd/widgets.cp-test.example.com", "--timeout=30s")
    ok = "apiVersion: cp-test.example.com/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {size: 3}\n"
    bad = "apiVersion: cp-test.example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 99}\n"
    kubectl("apply", "-n", namespace, "-f", "-", input=ok)
    rejected = kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr and "10" in rejected.stderr


def test_dependent_with_owner_reference_is_garbage_collected(kubectl: KubectlFn, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    uid = kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(dependent))
    kubectl("delete", "configmap", "owner", "-n", namespace)
    _wait(
        lambda: kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0,
        what="the garbage collector to delete the dependent",
    )


def test_deleted_namespace_disappears(kubectl: KubectlFn) -> None:
    kubectl("create", "namespace", "cp-test-doomed")
    kubectl("create", "configmap", "content", "-n", "cp-test-doomed")
    kubectl("delete", "namespace", "cp-test-doomed", "--wait=false")
    _wait(
        lambda: kubectl("get", "namespace", "cp-test-doomed", check=False).returncode != 0,
        what="the namespace controller to finish deleting the namespace",
    )


def test_rbac_denies_an_unprivileged_service_account(kubectl: KubectlFn, namespace: str) -> None:
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    who = f"system:serviceaccount:{namespace}:nobody"
    denied = kubectl("auth", "can-i", "list", "secrets", "-n", namespace, "--as", who, check=False)
    assert denied.stdout.strip() == "no"
    kubectl("create", "role", "read-cm", "-n", namespace, "--verb=get,list", "--resource=configmaps")
    kubectl(
        "create", "rolebinding", "read-cm", "-n", namespace, "--role=read-cm", f"--serviceaccount={namespace}:nobody"
    )
    allowed = kubectl("auth", "can-i", "list", "configmaps", "-n", namespace, "--as", who, check=False)
    assert allowed.stdout.strip() == "yes"


def test_create_token_issues_a_token_the_api_server_accepts(
    kubectl: KubectlFn, namespace: str, cluster: Cluster
) -> None:
    kubectl("create", "serviceaccount", "bot", "-n", namespace)
    token = kubectl("create", "token", "bot", "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2
    server = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    review = kubectl(
        "--token",
        token,
        "--server",
        server,
        "--insecure-skip-tls-verify",
        "--kubeconfig",
        "/dev/null",
        "auth",
        "whoami",
        "-o",
        "json",
        check=False,
    )
    assert review.returncode == 0, review.stderr
    assert json.loads(review.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:bot"


def test_cluster_up_is_idempotent_and_down_leaves_no_process(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "cp")
    took = plane.up()
    try:
        pids = json.loads((tmp_path / "cp" / "state.json").read_text())["pids"]
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert (tmp_path / "cp" / "logs" / "kube-apiserver.log").exists()
        assert plane.up() == 0.0, "a second up must reuse the running control plane"
        print(f"\nlocal control plane warm start: {took:.1f}s")
    finally:
        plane.down(quiet=True)
    state_dir = str(tmp_path / "cp")
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        assert state_dir not in cmdline, f"process {proc.name} of the stopped control plane still runs: {cmdline}"
    assert not (tmp_path / "cp").exists()
