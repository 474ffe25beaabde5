"""Find or build the control-plane binaries (etcd, kube-apiserver, kube-controller-manager, helm).

Order: ``$KUBEBUILDER_ASSETS`` (the envtest convention), the cache under
``~/.cache/webhook-operator/``, else a build with ``go`` through the Go module proxy at
the pinned versions below.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"
NATS_VERSION = "v2.15.3"
# The Kubernetes minor helm's client-go is built against: helm's default for .Capabilities.KubeVersion.
HELM_KUBE_MINOR = "36"
# Bumped when a recipe's build flags change, so a cached binary built the old way is not reused.
RECIPE_REVISION = {"kubernetes": "", "etcd": "", "helm": "-r2", "nats": ""}

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager")
# A real node beside the control plane (make cluster-node): built only when a node is asked for.
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")
ALL_BINARIES = ("etcd", *KUBE_BINARIES, "helm")


class BinariesUnavailable(RuntimeError):
    """Raised when a binary is neither present nor buildable here."""


def cache_root() -> Path:
    base = os.environ.get("WEBHOOK_OPERATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "webhook-operator"
    )
    return Path(base)


@dataclass(frozen=True)
class Recipe:
    """How to build one family of binaries from a generated wrapper Go module."""

    key: str  # cache folder name, includes the version
    binaries: tuple[str, ...]
    go_mod: str
    main_go: dict[str, str]  # binary -> main.go text ("" = build the package path directly)
    packages: dict[str, str]  # binary -> package path to build
    ldflags: str


def _log(msg: str) -> None:
    print(f"[binaries] {msg}", file=sys.stderr, flush=True)


def _minor(version: str) -> tuple[str, str]:
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        raise ValueError(f"not a release version: {version}")
    return match.group(1), match.group(2)


def staging_replacements(kubernetes_go_mod: str, version: str) -> list[tuple[str, str]]:
    """The ``k8s.io/*`` modules that k8s.io/kubernetes requires at v0.0.0, with their v0.Y.Z.

    k8s.io/kubernetes points those at its ``staging/`` tree; a module depending on it
    must replace them with the published staging releases of the same minor.
    """
    _, minor = _minor(version)
    patch = version.rsplit(".", 1)[1]
    staging_version = f"v0.{minor}.{patch}"
    found: list[tuple[str, str]] = []
    for line in kubernetes_go_mod.splitlines():
        match = re.match(r"^\s*(?:require\s+)?(k8s\.io/[\w./-]+)\s+v0\.0\.0(\s|$)", line)
        if match and match.group(1) not in {m for m, _ in found}:
            found.append((match.group(1), staging_version))
    return found


def _go(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    started = time.monotonic()
    _log(f"go {' '.join(args)}  (in {cwd})")
    full_env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", **(env or {})}
    result = subprocess.run(["go", *args], cwd=cwd, env=full_env, check=False)
    if result.returncode != 0:
        raise BinariesUnavailable(f"`go {' '.join(args)}` failed with exit code {result.returncode}")
    _log(f"  done in {time.monotonic() - started:.0f}s")


def _download_module_go_mod(module: str, version: str, workdir: Path) -> str:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise BinariesUnavailable(f"cannot download {module}@{version}: {out.stderr.strip() or out.stdout}")
    match = re.search(r'"GoMod":\s*"([^"]+)"', out.stdout)
    if not match:
        raise BinariesUnavailable(f"go mod download gave no go.mod for {module}@{version}")
    return Path(match.group(1)).read_text()


def kubernetes_recipe(
    workdir: Path, version: str = KUBERNETES_VERSION, names: tuple[str, ...] = KUBE_BINARIES, family: str = "kubernetes"
) -> Recipe:
    major, minor = _minor(version)
    upstream = _download_module_go_mod("k8s.io/kubernetes", version, workdir)
    go_line = re.search(r"^go\s+(\S+)", upstream, re.M)
    godebug = re.search(r"^godebug\s+.+$", upstream, re.M)
    replaces = staging_replacements(upstream, version)
    lines = [
        f"module webhook-operator.io/devcluster/{family}",
        "",
        f"go {go_line.group(1) if go_line else '1.24'}",
        godebug.group(0) if godebug else "",
        "",
        f"require k8s.io/kubernetes {version}",
        "",
        "replace (",
        *[f"\t{module} => {module} {v}" for module, v in replaces],
        ")",
        "",
        *[f"tool k8s.io/kubernetes/cmd/{name}" for name in names],
        "",
    ]
    build_date = "1970-01-01T00:00:00Z"
    pairs = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    ldflags = " ".join(
        f"-X {pkg}.{k}={v}"
        for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version")
        for k, v in pairs.items()
    )
    return Recipe(
        key=f"{family}-{version}",
        binaries=names,
        go_mod="\n".join(lines),
        main_go={},
        packages={name: f"k8s.io/kubernetes/cmd/{name}" for name in names},
        ldflags=f"-s -w {ldflags}",
    )


def etcd_recipe(version: str = ETCD_VERSION) -> Recipe:
    main = (
        "// Command etcd wraps go.etcd.io/etcd/server/v3/etcdmain at a pinned release.\n"
        "package main\n\n"
        'import (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    go_mod = f"module webhook-operator.io/devcluster/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 {version}\n"
    return Recipe(
        key=f"etcd-{version}",
        binaries=("etcd",),
        go_mod=go_mod,
        main_go={"etcd": main},
        packages={"etcd": "."},
        ldflags="-s -w",
    )


def helm_recipe(version: str = HELM_VERSION) -> Recipe:
    go_mod = (
        "module webhook-operator.io/devcluster/helm\n\ngo 1.24\n\n"
        f"require helm.sh/helm/v3 {version}\n\ntool helm.sh/helm/v3/cmd/helm\n"
    )
    return Recipe(
        key=f"helm-{version}{RECIPE_REVISION['helm']}",
        binaries=("helm",),
        go_mod=go_mod,
        main_go={},
        packages={"helm": "helm.sh/helm/v3/cmd/helm"},
        ldflags=" ".join(
            [
                f"-s -w -X helm.sh/helm/v3/internal/version.version={version}",
                *(
                    f"-X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}"
                    for pkg in ("chartutil", "lint/rules")
                    for part, value in (("Major", "1"), ("Minor", HELM_KUBE_MINOR))
                ),
            ]
        ),
    )


def nats_recipe(version: str = NATS_VERSION) -> Recipe:
    """nats-server with JetStream, for the event bus (--event-bus)."""
    go_mod = (
        "module webhook-operator.io/devcluster/nats\n\ngo 1.24\n\n"
        f"require github.com/nats-io/nats-server/v2 {version}\n\ntool github.com/nats-io/nats-server/v2\n"
    )
    return Recipe(
        key=f"nats-server-{version}{RECIPE_REVISION['nats']}",
        binaries=("nats-server",),
        go_mod=go_mod,
        main_go={},
        packages={"nats-server": "github.com/nats-io/nats-server/v2"},
        ldflags=f"-s -w -X github.com/nats-io/nats-server/v2/server.serverVersion={version.lstrip('v')}",
    )


def build(recipe_name: str) -> Path:
    """Build one recipe into the cache and return its bin folder; concurrent builders wait for each other."""
    if shutil.which("go") is None:
        raise BinariesUnavailable(missing_message())
    root = cache_root()
    workdir = root / "build" / recipe_name
    workdir.mkdir(parents=True, exist_ok=True)
    with open(root / "build" / f"{recipe_name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _build_locked(recipe_name, root, workdir)


def _build_locked(recipe_name: str, root: Path, workdir: Path) -> Path:
    started = time.monotonic()
    if recipe_name == "kubernetes":
        recipe = kubernetes_recipe(workdir)
    elif recipe_name == "kubernetes-node":
        recipe = kubernetes_recipe(workdir, names=NODE_BINARIES, family="kubernetes-node")
    elif recipe_name == "etcd":
        recipe = etcd_recipe()
    elif recipe_name == "helm":
        recipe = helm_recipe()
    elif recipe_name == "nats":
        recipe = nats_recipe()
    else:
        raise ValueError(recipe_name)
    bindir = root / "bin" / recipe.key
    if all((bindir / b).exists() for b in recipe.binaries):
        return bindir
    _log(
        f"building {recipe.key} with {subprocess.run(['go', 'version'], capture_output=True, text=True).stdout.strip()}"
    )
    _log("a cold build takes minutes on 2 cores (Kubernetes: 10-30); it is cached afterwards")
    (workdir / "go.mod").write_text(recipe.go_mod)
    for binary, text in recipe.main_go.items():
        (workdir / "main.go").write_text(text)
        del binary
    _go(["mod", "tidy"], workdir)
    staging = bindir.with_name(bindir.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    for binary in recipe.binaries:
        _go(
            ["build", "-trimpath", "-ldflags", recipe.ldflags, "-o", str(staging / binary), recipe.packages[binary]],
            workdir,
        )
    if bindir.exists():
        shutil.rmtree(bindir)
    staging.rename(bindir)
    _log(f"built {recipe.key} in {time.monotonic() - started:.0f}s -> {bindir}")
    return bindir


RECIPE_OF = {
    "etcd": "etcd",
    "kube-apiserver": "kubernetes",
    "kube-controller-manager": "kubernetes",
    "helm": "helm",
    **dict.fromkeys(NODE_BINARIES, "kubernetes-node"),
    "nats-server": "nats",
}


def cached_dir(binary: str) -> Path:
    key = {
        "kubernetes": f"kubernetes-{KUBERNETES_VERSION}",
        "kubernetes-node": f"kubernetes-node-{KUBERNETES_VERSION}",
        "etcd": f"etcd-{ETCD_VERSION}",
        "helm": f"helm-{HELM_VERSION}{RECIPE_REVISION['helm']}",
        "nats": f"nats-server-{NATS_VERSION}{RECIPE_REVISION['nats']}",
    }[RECIPE_OF[binary]]
    return cache_root() / "bin" / key


def find(binary: str, *, build_missing: bool = True) -> Path:
    """Path of ``binary``: from $KUBEBUILDER_ASSETS, the cache, or a fresh build."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / binary).is_file():
        return Path(assets) / binary
    candidate = cached_dir(binary) / binary
    if candidate.is_file():
        return candidate
    if not build_missing:
        raise BinariesUnavailable(missing_message())
    return build(RECIPE_OF[binary]) / binary


def ensure_all(binaries: Iterable[str] = ALL_BINARIES) -> dict[str, Path]:
    return {b: find(b) for b in binaries}


def missing_message() -> str:
    return (
        "The local control plane needs etcd, kube-apiserver and kube-controller-manager "
        f"(Kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION}) and helm {HELM_VERSION}.\n"
        "None were found and `go` is not installed to build them. Either:\n"
        "  - install Go >= 1.24 and re-run (they are built from the Go module proxy and cached in "
        f"{cache_root()}/bin), or\n"
        "  - on a machine with internet: `go run sigs.k8s.io/controller-runtime/tools/setup-envtest@latest "
        f"use {KUBERNETES_VERSION.lstrip('v')} -p path` and export KUBEBUILDER_ASSETS=<that path> "
        "(add kube-controller-manager from the Kubernetes server tarball to the same folder)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    wanted = args or list(ALL_BINARIES)
    try:
        for name, path in ensure_all(wanted).items():
            print(f"{name}: {path}")
    except BinariesUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
