"""Start and stop a real local control plane: etcd, kube-apiserver and kube-controller-manager.

Everything listens on loopback with TLS and lives in one state folder (default ``.cluster``):
certificates, etcd data, logs of each process, ``kubeconfig`` and ``state.json`` (pids, ports).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from devcluster import binaries
from devcluster.pki import CertificateAuthority, Pair, write_service_account_keys

STATE_FILE = "state.json"
READY_TIMEOUT_S = 90.0


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message names the log to read."""


def _log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); read its state to be sure.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kubeconfig_text(server: str, ca: Path, client: Pair, user: str) -> str:
    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64(client.cert), "client-key-data": b64(client.key)}}
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user, "namespace": "default"}}],
        "current-context": "local",
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class ControlPlane:
    """One local control plane rooted at ``state_dir``."""

    state_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def _state(self) -> dict[str, object] | None:
        try:
            data = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _pids(self) -> dict[str, int]:
        state = self._state() or {}
        pids = state.get("pids", {})
        return {k: int(v) for k, v in pids.items()} if isinstance(pids, dict) else {}

    def server(self) -> str | None:
        state = self._state() or {}
        server = state.get("server")
        return server if isinstance(server, str) else None

    def running(self) -> bool:
        pids = self._pids()
        return bool(pids) and all(_alive(p) for p in pids.values()) and self.ready()

    def ready(self) -> bool:
        server = self.server()
        if not server:
            return False
        pki = self.state_dir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{server}/readyz", context=context, timeout=2) as resp:
                return bool(resp.status == 200 and resp.read().strip() == b"ok")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def up(self) -> float:
        """Start the control plane unless it already runs; return the seconds it took."""
        started = time.monotonic()
        if self.running():
            _log(f"already running: {self.server()} (kubeconfig {self.kubeconfig})")
            return 0.0
        if self.state_dir.exists():
            self.down(quiet=True)
        paths = {name: binaries.find(name) for name in ("etcd", "kube-apiserver", "kube-controller-manager")}
        self.logs.mkdir(parents=True, exist_ok=True)
        pki_dir = self.state_dir / "pki"
        ca = CertificateAuthority(pki_dir)
        loopback = ("127.0.0.1", "::1")
        etcd_server = ca.issue(
            "etcd", common_name="etcd", server=True, client=True, dns_names=("localhost",), ips=loopback
        )
        etcd_client = ca.issue("apiserver-etcd-client", common_name="kube-apiserver-etcd-client", client=True)
        apiserver = ca.issue(
            "apiserver",
            common_name="kube-apiserver",
            server=True,
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=(*loopback, "10.0.0.1"),
        )
        admin = ca.issue("admin", common_name="admin", organization="system:masters", client=True)
        kcm = ca.issue("controller-manager", common_name="system:kube-controller-manager", client=True)
        # How the API server authenticates to a kubelet (logs, exec, port-forward) once a node joins.
        kubelet_client = ca.issue(
            "apiserver-kubelet-client", common_name="kube-apiserver-kubelet-client", organization="system:masters",
            client=True,
        )  # fmt: skip
        sa = write_service_account_keys(pki_dir)

        etcd_port, etcd_peer, api_port, kcm_port = free_port(), free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        pids: dict[str, int] = {}
        self._write_state({"server": server, "pids": pids, "ports": {"etcd": etcd_port, "apiserver": api_port}})

        etcd_url = f"https://127.0.0.1:{etcd_port}"
        pids["etcd"] = self._spawn(
            "etcd",
            [
                str(paths["etcd"]),
                "--name=local",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=local=http://127.0.0.1:{etcd_peer}",
                f"--cert-file={etcd_server.cert}",
                f"--key-file={etcd_server.key}",
                f"--trusted-ca-file={ca.cert_path}",
                "--client-cert-auth",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",  # throwaway data: skip fsync so tests are not disk-bound
                "--log-level=warn",
            ],
        )
        self._write_state({"server": server, "pids": pids, "ports": {"etcd": etcd_port, "apiserver": api_port}})
        pids["kube-apiserver"] = self._spawn(
            "kube-apiserver",
            [
                str(paths["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                f"--etcd-cafile={ca.cert_path}",
                f"--etcd-certfile={etcd_client.cert}",
                f"--etcd-keyfile={etcd_client.key}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.state_dir / 'apiserver-certs'}",
                f"--tls-cert-file={apiserver.cert}",
                f"--tls-private-key-file={apiserver.key}",
                f"--client-ca-file={ca.cert_path}",
                # Node: a kubelet may read only what its own pods need (as in every real cluster).
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                # A node's InternalIP is the address of its pod bridge on this machine (see node.py).
                "--kubelet-preferred-address-types=InternalIP",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        )
        self._write_state({"server": server, "pids": pids, "ports": {"etcd": etcd_port, "apiserver": api_port}})
        self.kubeconfig.write_text(kubeconfig_text(server, ca.cert_path, admin, "admin"))
        self.kubeconfig.chmod(0o600)
        kcm_kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        kcm_kubeconfig.write_text(kubeconfig_text(server, ca.cert_path, kcm, "system:kube-controller-manager"))
        self._wait_ready(server, "kube-apiserver")
        pids["kube-controller-manager"] = self._spawn(
            "kube-controller-manager",
            [
                str(paths["kube-controller-manager"]),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                # Each controller acts as its own service account with its bootstrap role, as in real clusters.
                "--use-service-account-credentials=true",
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller",
                f"--root-ca-file={ca.cert_path}",
                f"--cert-dir={self.state_dir / 'kcm-certs'}",
                "--v=1",
            ],
        )
        self._write_state(
            {"server": server, "pids": pids, "ports": {"etcd": etcd_port, "apiserver": api_port, "kcm": kcm_port}}
        )
        self._wait_kcm(kcm_port)
        took = time.monotonic() - started
        _log(f"ready in {took:.1f}s: {server}  (KUBECONFIG={self.kubeconfig})")
        return took

    def _write_state(self, state: dict[str, object]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

    def _spawn(self, name: str, argv: list[str]) -> int:
        (self.state_dir / f"{name}.argv.json").write_text(json.dumps(argv))  # for start() after a stop()
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        _log(f"started {name} (pid {proc.pid}, log {self.logs / (name + '.log')})")
        return proc.pid

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop one process (``etcd``, ``kube-apiserver``, ``kube-controller-manager``) and leave the rest
        running: a fault for tests. SIGKILL with ``kill``, else SIGTERM (SIGKILL after 10 s)."""
        pid = self._pids()[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)

    def start(self, name: str) -> None:
        """Start a process stopped by ``stop`` again, as it was; for the API server, wait until it is ready."""
        argv = json.loads((self.state_dir / f"{name}.argv.json").read_text())
        state = self._state() or {}
        pids = self._pids()
        pids[name] = self._spawn(name, argv)
        self._write_state({**state, "pids": pids})
        server = self.server()
        if (
            name in ("etcd", "kube-apiserver")
            and server
            and "kube-apiserver" in pids
            and _alive(pids["kube-apiserver"])
        ):
            self._wait_ready(server, name)

    def _wait_ready(self, server: str, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.ready():
                return
            for proc, pid in self._pids().items():
                if not _alive(pid):
                    raise ControlPlaneError(f"{proc} exited; see {self.logs / (proc + '.log')}")
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} at {server} not ready after {READY_TIMEOUT_S:.0f}s; see {self.logs}")

    def _wait_kcm(self, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; only liveness is asked here
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if not _alive(self._pids()["kube-controller-manager"]):
                raise ControlPlaneError(
                    f"kube-controller-manager exited; see {self.logs / 'kube-controller-manager.log'}"
                )
            time.sleep(0.2)
        raise ControlPlaneError("kube-controller-manager not healthy; see its log in " + str(self.logs))

    def down(self, *, quiet: bool = False) -> None:
        """Stop every process this control plane started (its node first) and remove its state folder."""
        from devcluster.node import Node

        Node(self).down(quiet=quiet)
        pids = self._pids()
        # Reverse start order: controller-manager, apiserver, then etcd.
        for name, pid in reversed(list(pids.items())):
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                if not quiet:
                    _log(f"stopping {name} (pid {pid})")
        deadline = time.monotonic() + 10
        for pid in pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed_by = time.monotonic() + 5
                while _alive(pid) and time.monotonic() < killed_by:
                    time.sleep(0.05)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if not quiet:
            _log(f"stopped; removed {self.state_dir}")
