"""`make image`: the project's Dockerfile built as webhook-operator:dev, and the node's images.

Without a reachable image registry the Dockerfile's default base (the official Python slim image)
cannot be pulled; a stand-in is then built from Debian packages (debootstrap + Debian's Python)
and passed as ``BASE_IMAGE``, and this says so. Images are imported into the local node's
containerd when one runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devcluster import docker
from devcluster.binaries import cache_root

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "dockerfiles"
PROJECT_IMAGE = "webhook-operator:dev"
DEBIAN_STANDIN = "webhook-operator-local/debian:bookworm"
PYTHON_STANDIN = "webhook-operator-local/python:3.11-slim-bookworm"
PAUSE_IMAGE = "localhost/webhook-operator-pause:3.10"
# Extra CA certificates installed on this machine (update-ca-certificates' source folder).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


def _log(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def default_base_image(dockerfile: Path = ROOT / "Dockerfile") -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile.read_text(), re.M)
    if not match:
        raise ValueError(f"{dockerfile} has no `ARG BASE_IMAGE=...` default")
    return match.group(1)


def _apt_mirror() -> str:
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.M)
        if match:
            return match.group(1)
    listing = Path("/etc/apt/sources.list")
    if listing.exists():
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", listing.read_text(), re.M)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


def debian_standin() -> str:
    """Debian bookworm (minbase) as an image, from the package mirror apt already uses (~1 min)."""
    if docker.image_exists(DEBIAN_STANDIN):
        return DEBIAN_STANDIN
    if shutil.which("debootstrap") is None:
        raise docker.DockerUnavailable("building the Debian stand-in needs debootstrap (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="wo-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _log(f"debootstrap --variant=minbase bookworm from {_apt_mirror()}")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), _apt_mirror()],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        apt = rootfs / "etc" / "apt"
        for sources in Path("/etc/apt/sources.list.d").glob("*.sources"):
            shutil.copy(sources, apt / "sources.list.d" / sources.name)
        if any((apt / "sources.list.d").glob("*.sources")):
            (apt / "sources.list").unlink(missing_ok=True)
        for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        subprocess.run([docker.client(), "import", "-", DEBIAN_STANDIN], stdin=tar.stdout, check=True)
        tar.stdout.close()
        if tar.wait() != 0:
            raise docker.DockerUnavailable("tar of the Debian root file system failed")
    return DEBIAN_STANDIN


def python_standin() -> str:
    if docker.image_exists(PYTHON_STANDIN):
        return PYTHON_STANDIN
    debian = debian_standin()
    with tempfile.TemporaryDirectory(prefix="wo-pybase-") as tmp:
        context = Path(tmp)
        (context / "certs").mkdir()
        for cert in LOCAL_CA_DIR.glob("*.crt") if LOCAL_CA_DIR.is_dir() else []:
            shutil.copy(cert, context / "certs" / cert.name)
        shutil.copy(HERE / "python-standin.Dockerfile", context / "Dockerfile")
        docker.docker(
            "build", "--network", "host", "--build-arg", f"DEBIAN_IMAGE={debian}", "-t", PYTHON_STANDIN, str(context)
        )
    return PYTHON_STANDIN


def registry_reachable(image: str) -> bool:
    """Whether the base image is here already or can be pulled (a refused or hanging pull is a no)."""
    if docker.image_exists(image):
        return True
    try:
        pulled = subprocess.run([docker.client(), "pull", "-q", image], capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return False
    return pulled.returncode == 0


def base_image() -> str:
    official = default_base_image()
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    if registry_reachable(official):
        return official
    _log(
        f"no image registry reachable for {official}: building a local Debian-based stand-in "
        f"({PYTHON_STANDIN}: debootstrap bookworm + Debian's Python 3.11) and using it as BASE_IMAGE"
    )
    return python_standin()


def build_project(tag: str = PROJECT_IMAGE) -> str:
    docker.ensure_engine()
    base = base_image()
    _log(f"docker build -t {tag} --build-arg BASE_IMAGE={base} {ROOT}")
    docker.docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(ROOT))
    return tag


def build_pause() -> str:
    """The pod sandbox image, a static binary (what registry.k8s.io/pause is), built from pause.c."""
    docker.ensure_engine()
    if docker.image_exists(PAUSE_IMAGE):
        return PAUSE_IMAGE
    work = cache_root() / "build" / "pause"
    work.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise docker.DockerUnavailable("building the pause image needs a C compiler (apt-get install gcc libc6-dev)")
    subprocess.run([cc, "-Os", "-static", "-o", str(work / "pause"), str(HERE / "pause.c")], check=True)
    subprocess.run(["strip", str(work / "pause")], check=False)
    shutil.copy(HERE / "pause.Dockerfile", work / "Dockerfile")
    docker.docker("build", "-t", PAUSE_IMAGE, str(work))
    return PAUSE_IMAGE


def import_into_node(images: list[str], address: str) -> None:
    """``docker save`` piped into the node's containerd (namespace k8s.io, where the kubelet looks)."""
    save = subprocess.Popen([docker.client(), "save", *images], stdout=subprocess.PIPE)
    assert save.stdout is not None
    result = subprocess.run(
        ["ctr", "--address", address, "-n", "k8s.io", "images", "import", "-"],
        stdin=save.stdout, capture_output=True, check=False,
    )  # fmt: skip
    save.stdout.close()
    if save.wait() != 0 or result.returncode != 0:
        raise docker.DockerUnavailable(f"importing {images} into the node failed: {result.stderr.decode()[-2000:]}")
    _log(f"imported {', '.join(images)} into the node's containerd")


def main(state_dir: Path) -> int:
    from devcluster.controlplane import ControlPlane
    from devcluster.node import Node

    try:
        tag = build_project()
        node = Node(ControlPlane(state_dir))
        if node.running():
            import_into_node([tag], node.containerd_address)
        else:
            _log(f"no node runs for {state_dir} (make cluster-node): the image stays in Docker only")
    except (docker.DockerUnavailable, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0
