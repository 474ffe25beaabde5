"""The Debian packages the test suite and the local node need, installed when missing.

As root (CI, a fresh VM) they are installed with apt-get; otherwise one line says what to
install, and the tests that need a missing piece say so when they skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# package -> a file it installs (what tells that it is there)
PACKAGES: dict[str, str] = {
    "prometheus": "prometheus",  # Prometheus server and promtool: monitoring tests
    "docker.io": "dockerd",  # image builds (dockerd with BuildKit and its client)
    "containerd": "containerd",  # the node's container runtime (with ctr)
    "runc": "runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",  # the node's pod network
    "iptables": "iptables",  # kube-proxy and the kubelet
    "conntrack": "conntrack",  # kube-proxy clears stale UDP entries with it
    "iproute2": "ip",
    "socat": "socat",  # the API server's address on the pod bridge
    "debootstrap": "debootstrap",  # the Debian base image where no image registry is reachable
    "gcc": "gcc",  # the pause image's static binary
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
}


def _present(marker: str) -> bool:
    if marker.startswith("/"):
        return Path(marker).exists()
    return shutil.which(marker) is not None or any(Path(d, marker).exists() for d in ("/usr/sbin", "/sbin"))


def missing() -> list[str]:
    return [package for package, marker in PACKAGES.items() if not _present(marker)]


def ensure() -> int:
    wanted = missing()
    if not wanted:
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            f"[system] missing Debian packages (the in-cluster and monitoring tests skip without them): "
            f"sudo apt-get install -y {' '.join(wanted)}",
            file=sys.stderr,
        )
        return 0
    print(f"[system] apt-get install {' '.join(wanted)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    # Where an init system exists, packages start their daemons; the tests run their own.
    for daemon in ("prometheus",):
        subprocess.run(["pkill", "-x", daemon], capture_output=True, check=False)
    still = missing()
    if still:
        print(f"[system] still missing after apt-get: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0
