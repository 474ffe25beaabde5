"""The local node's generated configuration, and the line between the runtime and the tooling."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import setuptools

from devcluster import binaries, node

REPO = Path(__file__).resolve().parents[2]


def test_pod_network_stays_on_this_machine() -> None:
    config = node.cni_config(Path("/run/x/ipam"))
    bridge = config["plugins"][0]
    assert bridge["bridge"] == node.BRIDGE
    assert bridge["ipMasq"] is False, "no NAT: pods must not reach anything beyond this machine"
    [[pod_range]] = bridge["ipam"]["ranges"]
    assert pod_range == {"subnet": node.POD_SUBNET, "gateway": node.NODE_IP}


def test_kube_proxy_masquerades_service_traffic_for_pod_to_pod_on_one_bridge() -> None:
    config = node.kube_proxy_config(Path("/k"), 1, 2)
    assert config["mode"] == "iptables"
    assert config["iptables"]["masqueradeAll"] is True
    assert config["clusterCIDR"] == node.POD_SUBNET
    assert config["conntrack"]["maxPerCore"] == 0, "the host's conntrack sysctls stay as they are"


def test_kubelet_serves_on_the_node_address_and_authorizes_through_the_api_server() -> None:
    config = node.kubelet_config(Path("/pki"), 10250, 10248, Path("/root"))
    assert config["address"] == node.NODE_IP
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["cgroupDriver"] == "cgroupfs" and config["failCgroupV1"] is False


def test_containerd_config_is_valid_toml_with_the_settings_this_vm_needs() -> None:
    text = node.containerd_config(Path("/r"), Path("/s"), Path("/s/c.sock"), Path("/cni"), "localhost/pause:3.10")
    config = tomllib.loads(text)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["sandbox_image"] == "localhost/pause:3.10"
    assert cri["cni"]["conf_dir"] == "/cni"
    assert config["grpc"]["address"] == "/s/c.sock"


def test_api_endpoint_slice_backs_the_kubernetes_service() -> None:
    slice_ = node.api_endpoint_slice(6443)
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes"
    assert slice_["endpoints"][0]["addresses"] == [node.NODE_IP]
    assert slice_["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]


def test_node_binaries_are_a_recipe_of_their_own() -> None:
    assert {binaries.RECIPE_OF[b] for b in binaries.NODE_BINARIES} == {"kubernetes-node"}
    assert binaries.cached_dir("kubelet").name == f"kubernetes-node-{binaries.KUBERNETES_VERSION}"
    assert not set(binaries.NODE_BINARIES) & set(binaries.ALL_BINARIES), "make cluster does not build them"


def test_the_operator_never_imports_the_local_cluster_tooling() -> None:
    code = (
        "import sys, webhook_operator.cli, webhook_operator.handlers, webhook_operator.plugin; "
        "sys.exit(1 if any(m == 'devcluster' or m.startswith('devcluster.') for m in sys.modules) else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr or "devcluster was imported"


def test_the_wheel_carries_only_the_runtime_package() -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = setuptools.find_packages(where=str(REPO / find["where"][0]), include=find.get("include", ["*"]))
    assert "webhook_operator.delivery" in found
    assert not [p for p in found if p.split(".")[0] == "devcluster"]
