"""The kstatus library itself (sigs.k8s.io/cli-utils/pkg/kstatus/status, what Flux uses) run on objects.

``tests/kstatus`` is a small Go command built once through the Go module proxy and cached under
``~/.cache/webhook-operator/bin/kstatus-<cli-utils version>-<source hash>/``, like the control-plane
binaries; concurrent builders wait for each other on a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from devcluster.binaries import BinariesUnavailable, cache_root

SOURCE = Path(__file__).resolve().parents[1] / "kstatus"


def cli_utils_version() -> str:
    match = re.search(r"^\s*(?:require\s+)?sigs\.k8s\.io/cli-utils\s+(v\S+)", (SOURCE / "go.mod").read_text(), re.M)
    if not match:
        raise BinariesUnavailable("tests/kstatus/go.mod does not pin sigs.k8s.io/cli-utils")
    return match.group(1)


def cached_path() -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    return cache_root() / "bin" / f"kstatus-{cli_utils_version()}-{digest.hexdigest()[:12]}" / "kstatus"


def find_or_build() -> Path:
    """Path of the built helper; builds it (seconds once the k8s.io modules are in the module cache)."""
    target = cached_path()
    if target.is_file():
        return target
    if shutil.which("go") is None:
        raise BinariesUnavailable("`go` is needed to build tests/kstatus (the kstatus library) and is not installed")
    lock_dir = cache_root() / "build"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "kstatus.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        partial = target.with_name(target.name + ".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly"}
        result = subprocess.run(
            ["go", "build", "-trimpath", "-o", str(partial), "."],
            cwd=SOURCE,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BinariesUnavailable(f"building tests/kstatus failed:\n{result.stderr}")
        partial.rename(target)
    return target


def compute(objects: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """name -> (kstatus status, message) of each object, e.g. ("Failed", "0/1 delivered")."""
    helper = find_or_build()
    result = subprocess.run(
        [str(helper)], input=json.dumps(objects), capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise AssertionError(f"kstatus helper failed: {result.stderr}")
    return {r["name"]: (r["status"], r["message"]) for r in json.loads(result.stdout)}
