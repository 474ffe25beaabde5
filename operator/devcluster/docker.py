"""The Docker engine that builds images: found running, or started here (root, Debian's docker.io)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devcluster.binaries import cache_root


class DockerUnavailable(RuntimeError):
    """No engine runs and none can be started here; the message says what to install."""


def _log(msg: str) -> None:
    print(f"[docker] {msg}", file=sys.stderr, flush=True)


def client() -> str:
    """Debian's client has BuildKit built in; a newer client earlier on PATH may need a buildx plugin."""
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise DockerUnavailable("no docker client: install Debian's docker.io (apt-get install docker.io)")


def running() -> bool:
    try:
        probe = subprocess.run([client(), "info"], capture_output=True, timeout=20, check=False)
    except (DockerUnavailable, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def ensure_engine() -> None:
    """Use a running engine; else start dockerd, which then keeps running (like a build cache)."""
    if running():
        return
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None)
    if dockerd is None or os.geteuid() != 0:
        raise DockerUnavailable(
            "no Docker engine runs here; start one, or as root install Debian's docker.io "
            "(apt-get install docker.io) and this command starts dockerd itself"
        )
    log = cache_root() / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # No iptables rules and no bridge of its own: builds use the host network (docker build
    # --network host), and the local node's pod network stays the only one on this machine.
    argv = [
        dockerd,
        "--storage-driver=overlay2",
        "--exec-opt=native.cgroupdriver=cgroupfs",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        "--ip-forward=false",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    _log(f"started dockerd (pid {proc.pid}, log {log})")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if running():
            return
        if proc.poll() is not None:
            raise DockerUnavailable(f"dockerd exited with {proc.returncode}; see {log}")
        time.sleep(0.5)
    raise DockerUnavailable(f"dockerd did not answer within 60 s; see {log}")


def docker(*args: str, input: bytes | None = None, timeout: float = 1800, capture: bool = False) -> str:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    result = subprocess.run(
        [client(), *args], input=input, env=env, timeout=timeout, check=False,
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None,
    )  # fmt: skip
    if result.returncode != 0:
        detail = (result.stderr or b"").decode(errors="replace")[-3000:] if capture else ""
        raise DockerUnavailable(f"docker {' '.join(args[:2])} failed ({result.returncode}) {detail}".rstrip())
    return (result.stdout or b"").decode(errors="replace") if capture else ""


def image_exists(ref: str) -> bool:
    probe = subprocess.run([client(), "image", "inspect", ref], capture_output=True, check=False)
    return probe.returncode == 0
