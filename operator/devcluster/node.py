"""One real kubelet node beside the local control plane (``make cluster-node``).

containerd (Debian's) runs the pods with runc; the kubelet, kube-scheduler and kube-proxy are
built from the same Kubernetes release as the API server; a second kube-controller-manager runs
the controllers a Deployment needs. Pods live on a CNI bridge of their own (``wo-cni0``,
10.244.0.0/24): the bridge's address 10.244.0.1 is the node's InternalIP, where the kubelet
serves and where a forwarder exposes the loopback-only API server, so the ``kubernetes``
Service reaches it. No pod traffic leaves this machine: there is no masquerading to the outside.

There is no image registry: images come from Docker (``make image``) and are imported into
containerd. There is no cluster DNS either: in-cluster clients use Service IPs.

One node per machine (containerd, the bridge and iptables are machine-wide). Everything it
changes on the host is undone by ``down``: processes, containers, mounts, network namespaces,
the bridge, iptables chains, ``net.ipv4.ip_forward``, and its folders.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devcluster import binaries
from devcluster.pki import CertificateAuthority

if TYPE_CHECKING:
    from devcluster.controlplane import ControlPlane

NODE_NAME = "local-node"
BRIDGE = "wo-cni0"
POD_SUBNET = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
NETWORK_NAME = "webhook-operator"
HOST_STATE = Path("/var/lib/webhook-operator-node")  # containerd's images and kubelet's volumes
HOST_RUN = Path("/run/webhook-operator-node")  # sockets, containerd's state, IP allocations
CONTAINERD_SOCKET = HOST_RUN / "containerd.sock"
OWNER_FILE = HOST_RUN / "owner"
READY_TIMEOUT_S = 120.0
PROCESSES = ("containerd", "kube-controller-manager-node", "kube-scheduler", "kubelet", "api-forwarder", "kube-proxy")
# The commands the node needs from Debian's packages (see devcluster/system.py).
HOST_COMMANDS = ("containerd", "runc", "ctr", "ip", "iptables", "socat")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CNI_DIR = Path("/usr/lib/cni")


class NodeError(RuntimeError):
    """The node did not come up; the message names the log to read."""


def _log(msg: str) -> None:
    print(f"[node] {msg}", file=sys.stderr, flush=True)


def _run(*argv: str, check: bool = True, input: str | None = None, timeout: float = 60) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def _alive(pid: int) -> bool:
    from devcluster.controlplane import _alive as alive

    return alive(pid)


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not _alive(pid):
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _plane_at(state_dir: Path) -> ControlPlane:
    from devcluster.controlplane import ControlPlane

    return ControlPlane(state_dir)


def missing_host_commands() -> list[str]:
    missing = [c for c in HOST_COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    missing += [f"{CNI_DIR}/{p}" for p in CNI_PLUGINS if not (CNI_DIR / p).exists()]
    return missing


def containerd_config(root: Path, state: Path, socket: Path, cni_conf_dir: Path, sandbox_image: str) -> str:
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Without CAP_SYS_RESOURCE (as in many VMs and containers) runc cannot lower oom_score_adj below
  # its own, and every sandbox would fail to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_DIR}"
    conf_dir = "{cni_conf_dir}"
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # Pods reach this machine and each other, nothing beyond: no NAT to the outside.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(pki: Path, port: int, healthz_port: int, root: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Many VMs still run cgroup v1, and not under systemd.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "address": NODE_IP,
        "port": port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "readOnlyPort": 0,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "failSwapOn": False,
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "volumePluginDir": str(root / "volume-plugins"),
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Pod -> Service -> pod on one bridge: without br_netfilter the reply would skip the
        # reverse NAT; masquerading all Service traffic sends it back through the host.
        "iptables": {"masqueradeAll": True},
        # Leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def api_endpoint_slice(api_port: int) -> dict[str, Any]:
    """The ``kubernetes`` Service's endpoint: the forwarder on the node address (the API server
    listens on loopback only and runs with --endpoint-reconciler-type=none)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes-local-node",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "devcluster.webhook-operator.io",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
    }


@dataclass
class Node:
    plane: ControlPlane

    @property
    def dir(self) -> Path:
        return self.plane.state_dir / "node"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def containerd_address(self) -> str:
        return str(CONTAINERD_SOCKET)

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))

    def running(self) -> bool:
        pids = self._state().get("pids", {})
        return bool(pids) and all(_alive(int(p)) for p in pids.values()) and self._node_ready()

    def _kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return _run("kubectl", f"--kubeconfig={self.plane.kubeconfig}", *args, input=input, check=check)

    def _node_ready(self) -> bool:
        try:
            out = self._kubectl(
                "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
            )
        except (subprocess.TimeoutExpired, OSError):
            return False
        return out.strip() == "True"

    # --- up -------------------------------------------------------------------------------------

    def up(self) -> float:
        """Start the node (and the control plane under it) unless it runs; return the seconds it took."""
        started = time.monotonic()
        if os.geteuid() != 0:
            raise NodeError("a kubelet node needs root (containerd, mounts, a bridge, iptables)")
        missing = missing_host_commands()
        if missing:
            raise NodeError(
                f"missing on this machine: {', '.join(missing)}; install Debian's "
                "containerd runc containernetworking-plugins iptables socat iproute2"
            )
        self._claim_host()
        if not self.plane.running():
            self.plane.up()
        if self.running():
            _log(f"already running: node {NODE_NAME} ({self.plane.kubeconfig})")
            return 0.0
        self.down(quiet=True)
        self._claim_host()
        paths = {b: binaries.find(b) for b in (*binaries.NODE_BINARIES, "kube-controller-manager")}
        from devcluster import image

        pause = image.build_pause()
        self.logs.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"pids": {}, "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()}
        self._save(state)
        self._host_network()
        pki = self._certificates()
        pids: dict[str, int] = state["pids"]

        cni_dir = self.dir / "cni"
        cni_dir.mkdir(parents=True, exist_ok=True)
        (cni_dir / "10-webhook-operator.conflist").write_text(json.dumps(cni_config(HOST_RUN / "ipam"), indent=2))
        config = self.dir / "containerd.toml"
        config.write_text(
            containerd_config(HOST_STATE / "containerd", HOST_RUN / "containerd", CONTAINERD_SOCKET, cni_dir, pause)
        )
        pids["containerd"] = self._spawn("containerd", ["containerd", "--config", str(config)])
        self._save(state)
        self._wait(lambda: CONTAINERD_SOCKET.exists() and self._ctr_ok(), "containerd", 30)
        image.import_into_node([pause], self.containerd_address)

        from devcluster.controlplane import free_port

        kcm_port, sched_port = free_port(), free_port()
        pids["kube-controller-manager-node"] = self._spawn(
            "kube-controller-manager-node",
            [
                str(paths["kube-controller-manager"]),
                f"--kubeconfig={self.plane.state_dir / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.plane.state_dir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.plane.state_dir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--controllers=deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,"
                "node-lifecycle-controller,endpointslice-controller,pod-garbage-collector-controller,"
                "disruption-controller",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cert-dir={self.dir / 'kcm-certs'}",
                "--v=1",
            ],
        )
        kubeconfigs = self.dir / "kubeconfigs"
        pids["kube-scheduler"] = self._spawn(
            "kube-scheduler",
            [
                str(paths["kube-scheduler"]),
                f"--kubeconfig={kubeconfigs / 'kube-scheduler'}",
                f"--authentication-kubeconfig={kubeconfigs / 'kube-scheduler'}",
                f"--authorization-kubeconfig={kubeconfigs / 'kube-scheduler'}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--v=1",
            ],
        )
        self._save(state)

        kubelet_root = HOST_STATE / "kubelet"
        kubelet_root.mkdir(parents=True, exist_ok=True)
        (self.dir / "kubelet.yaml").write_text(
            json.dumps(kubelet_config(pki, free_port(), free_port(), kubelet_root), indent=2)
        )
        pids["kubelet"] = self._spawn(
            "kubelet",
            [
                str(paths["kubelet"]),
                f"--config={self.dir / 'kubelet.yaml'}",
                f"--kubeconfig={kubeconfigs / 'kubelet'}",
                f"--root-dir={kubelet_root}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )
        self._save(state)

        server = self.plane.server() or ""
        api_port = int(server.rsplit(":", 1)[1])
        pids["api-forwarder"] = self._spawn(
            "api-forwarder",
            ["socat", f"TCP-LISTEN:{api_port},bind={NODE_IP},reuseaddr,fork", f"TCP:127.0.0.1:{api_port}"],
        )
        self._kubectl("apply", "-f", "-", input=json.dumps(api_endpoint_slice(api_port)))
        (self.dir / "kube-proxy.yaml").write_text(
            json.dumps(kube_proxy_config(kubeconfigs / "kube-proxy", free_port(), free_port()), indent=2)
        )
        pids["kube-proxy"] = self._spawn(
            "kube-proxy", [str(paths["kube-proxy"]), f"--config={self.dir / 'kube-proxy.yaml'}", "--v=1"]
        )
        self._save(state)
        self._wait(self._node_ready, f"node {NODE_NAME} Ready", READY_TIMEOUT_S)
        took = time.monotonic() - started
        _log(f"node {NODE_NAME} Ready in {took:.1f}s  (KUBECONFIG={self.plane.kubeconfig})")
        return took

    def _claim_host(self) -> None:
        HOST_RUN.mkdir(parents=True, exist_ok=True)
        mine = str(self.plane.state_dir.resolve())
        try:
            owner = OWNER_FILE.read_text().strip()
        except OSError:
            owner = ""
        if owner and owner != mine:
            other = Node(_plane_at(Path(owner)))
            if other.alive():
                raise NodeError(
                    f"a node of the cluster in {owner} runs on this machine (one node per machine); "
                    f"stop it first: python -m devcluster cluster down --state-dir {owner}"
                )
            # Left behind by a run that was killed: undo its host changes before taking over.
            other.down(quiet=True)
            HOST_RUN.mkdir(parents=True, exist_ok=True)
        OWNER_FILE.write_text(mine)

    def alive(self) -> bool:
        """Whether any process of this node still runs."""
        return any(_alive(int(pid)) for pid in self._state().get("pids", {}).values())

    def _host_network(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).strip() == "":
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Pod -> Service -> pod is routed through the host.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")

    def _certificates(self) -> Path:
        pki = self.dir / "pki"
        ca = CertificateAuthority.load(self.plane.state_dir / "pki")
        pki.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca.cert_path, pki / "ca.crt")
        serving = ca.issue("kubelet-serving", common_name=f"system:node:{NODE_NAME}", server=True, ips=(NODE_IP,))
        shutil.copy(serving.cert, pki / "kubelet-serving.crt")
        shutil.copy(serving.key, pki / "kubelet-serving.key")
        from devcluster.controlplane import kubeconfig_text

        server = self.plane.server() or ""
        kubeconfigs = self.dir / "kubeconfigs"
        kubeconfigs.mkdir(parents=True, exist_ok=True)
        for name, common_name, group in (
            ("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            ("kube-proxy", "system:kube-proxy", None),
            ("kube-scheduler", "system:kube-scheduler", None),
        ):
            pair = ca.issue(f"node-{name}", common_name=common_name, organization=group, client=True)
            path = kubeconfigs / name
            path.write_text(kubeconfig_text(server, ca.cert_path, pair, common_name))
            path.chmod(0o600)
        return pki

    def _spawn(self, name: str, argv: list[str]) -> int:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        _log(f"started {name} (pid {proc.pid}, log {self.logs / (name + '.log')})")
        return proc.pid

    def _ctr_ok(self) -> bool:
        return (
            subprocess.run(
                ["ctr", "--address", self.containerd_address, "version"], capture_output=True, check=False
            ).returncode
            == 0
        )

    def _wait(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, pid in self._state().get("pids", {}).items():
                if not _alive(int(pid)):
                    raise NodeError(f"{name} exited while waiting for {what}; see {self.logs / (name + '.log')}")
            time.sleep(0.5)
        raise NodeError(f"{what}: not after {timeout:.0f}s; see the logs in {self.logs}")

    # --- down -----------------------------------------------------------------------------------

    def down(self, *, quiet: bool = False) -> None:
        """Stop the node and undo every host change it made; safe to call when nothing runs."""
        state = self._state()
        pids = {k: int(v) for k, v in state.get("pids", {}).items()}
        try:
            owner = OWNER_FILE.read_text().strip()
        except OSError:
            owner = ""
        ours = owner == str(self.plane.state_dir.resolve())
        if not pids and not ours:
            return
        if not quiet:
            _log("stopping the node")
        # No new pods: controllers and the scheduler first. Then let the kubelet take down its pods
        # the proper way (CRI: network namespaces released through CNI), briefly.
        for name in ("kube-controller-manager-node", "kube-scheduler"):
            if name in pids:
                _stop_pid(pids[name])
        if "kubelet" in pids and _alive(pids["kubelet"]) and self.plane.running():
            self._kubectl(
                "delete", "pods", "-A", "--field-selector", f"spec.nodeName={NODE_NAME}",
                "--grace-period=0", "--force", "--wait=false", check=False,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._tasks():
                time.sleep(0.5)
        for name in ("kube-proxy", "kubelet", "api-forwarder"):
            if name in pids:
                _stop_pid(pids[name])
        self._remove_containers()
        if "containerd" in pids:
            _stop_pid(pids["containerd"])
        self._kill_shims()
        self._unmount_and_release()
        self._remove_iptables_chains()
        if "kube-proxy" in pids:
            try:
                kube_proxy = binaries.find("kube-proxy", build_missing=False)
                _run(str(kube_proxy), "--cleanup", check=False)
            except binaries.BinariesUnavailable:
                pass
        _run("ip", "link", "del", BRIDGE, check=False)
        if state.get("ip_forward") in ("0", "1"):
            Path("/proc/sys/net/ipv4/ip_forward").write_text(f"{state['ip_forward']}\n")
        if self.plane.running():
            self._kubectl("delete", "node", NODE_NAME, "--ignore-not-found", check=False)
            self._kubectl("delete", "endpointslice", "-n", "default", "kubernetes-local-node", "--ignore-not-found",
                          check=False)  # fmt: skip
        shutil.rmtree(HOST_STATE, ignore_errors=True)
        shutil.rmtree(HOST_RUN, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not quiet:
            _log("stopped; removed its containers, mounts, bridge, iptables chains and state")

    def _tasks(self) -> list[str]:
        if not CONTAINERD_SOCKET.exists():
            return []
        out = subprocess.run(
            ["ctr", "--address", self.containerd_address, "-n", "k8s.io", "tasks", "ls", "-q"],
            capture_output=True, text=True, check=False, timeout=20,
        )  # fmt: skip
        return out.stdout.split() if out.returncode == 0 else []

    def _remove_containers(self) -> None:
        if not CONTAINERD_SOCKET.exists() or not self._ctr_ok():
            return
        ctr = ["ctr", "--address", self.containerd_address, "-n", "k8s.io"]
        for task in self._tasks():
            subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, check=False)
        time.sleep(0.5)
        listing = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True, check=False)
        for container in listing.stdout.split():
            subprocess.run([*ctr, "tasks", "delete", "-f", container], capture_output=True, check=False)
            subprocess.run([*ctr, "containers", "delete", container], capture_output=True, check=False)

    def _kill_shims(self) -> None:
        """containerd's shims outlive containerd; end the ones serving this node's containerd."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                cmdline
                and cmdline[0].endswith(b"containerd-shim-runc-v2")
                and str(CONTAINERD_SOCKET).encode() in cmdline
            ):
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount_and_release(self) -> None:
        """Unmount what the kubelet and containerd mounted, and the pods' network namespaces."""
        prefixes = (str(HOST_STATE), str(HOST_RUN))
        for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
            # Only namespaces holding an address of this node's pod network.
            addresses = _run("ip", "-n", netns.name, "-4", "-o", "addr", "show", check=False)
            if f" {POD_SUBNET.rsplit('.', 1)[0]}." in addresses:
                subprocess.run(["umount", str(netns)], capture_output=True, check=False)
                netns.unlink(missing_ok=True)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)

    @staticmethod
    def _remove_iptables_chains() -> None:
        """The chains the kubelet, kube-proxy and the CNI portmap plugin add (KUBE-*, CNI-*), with the
        rules in built-in chains that jump to them."""
        for command in ("iptables", "ip6tables"):
            if shutil.which(command) is None:
                continue
            for table in ("filter", "nat", "mangle"):
                rules = _run(command, "-t", table, "-S", check=False).splitlines()
                ours = [r for r in rules if r.startswith("-N ") and r.split()[1].startswith(("KUBE-", "CNI-"))]
                for rule in rules:
                    parts = shlex.split(rule)
                    if parts[:1] == ["-A"] and any(p.startswith(("KUBE-", "CNI-")) for p in parts[2:]):
                        subprocess.run([command, "-t", table, "-D", *parts[1:]], capture_output=True, check=False)
                for chain in (r.split()[1] for r in ours):
                    subprocess.run([command, "-t", table, "-F", chain], capture_output=True, check=False)
                for chain in (r.split()[1] for r in ours):
                    subprocess.run([command, "-t", table, "-X", chain], capture_output=True, check=False)
