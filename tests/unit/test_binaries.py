"""How the control-plane binaries are located and how their wrapper modules are generated."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster import binaries

GO_MOD = """module k8s.io/kubernetes

go 1.25.0

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
\tk8s.io/apiserver v0.0.0
\tk8s.io/utils v0.0.0-20251002143259-bc988d571ff4
)

require (
\tk8s.io/kms v0.0.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
)
"""


def test_staging_modules_at_v0_0_0_are_replaced_with_the_matching_v0_minor_release() -> None:
    assert binaries.staging_replacements(GO_MOD, "v1.35.4") == [
        ("k8s.io/api", "v0.35.4"),
        ("k8s.io/apiserver", "v0.35.4"),
        ("k8s.io/kms", "v0.35.4"),
    ]


def test_kubebuilder_assets_win_over_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "etcd").write_text("#!/bin/sh\n")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("WEBHOOK_OPERATOR_CACHE", str(tmp_path / "cache"))
    assert binaries.find("etcd", build_missing=False) == assets / "etcd"


def test_cached_binary_is_used_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("WEBHOOK_OPERATOR_CACHE", str(tmp_path))
    cached = binaries.cached_dir("helm") / "helm"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    assert binaries.find("helm", build_missing=False) == cached


def test_no_binaries_and_no_go_gives_a_message_that_says_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("WEBHOOK_OPERATOR_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no go on PATH
    with pytest.raises(binaries.BinariesUnavailable) as raised:
        binaries.find("kube-apiserver")
    message = str(raised.value)
    assert "setup-envtest" in message and "KUBEBUILDER_ASSETS" in message and binaries.KUBERNETES_VERSION in message


def test_nats_server_recipe_pins_the_release_and_its_version_string() -> None:
    recipe = binaries.nats_recipe()
    assert recipe.key == f"nats-server-{binaries.NATS_VERSION}"
    assert f"require github.com/nats-io/nats-server/v2 {binaries.NATS_VERSION}" in recipe.go_mod
    assert f"serverVersion={binaries.NATS_VERSION.lstrip('v')}" in recipe.ldflags
    assert binaries.RECIPE_OF["nats-server"] == "nats"
