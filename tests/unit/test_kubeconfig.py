"""Credentials from kubeconfig files and the in-cluster service account, without the kubernetes package."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook_operator import kubeconfig
from webhook_operator.kubeconfig import ConfigError, from_kubeconfig, in_cluster, needs_client_library


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def config(
    *, cluster: dict[str, Any], user: dict[str, Any], current: str = "dev", namespace: str | None = None
) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": "c", "user": "u"}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "dev", "context": context}],
    }


@pytest.fixture(autouse=True)
def not_in_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_file_names_are_relative_to_the_kubeconfig_folder(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config",
        config(
            cluster={"server": "https://127.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
            user={"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key"},
            namespace="shop",
        ),
    )

    creds = from_kubeconfig([path])

    assert creds.server == "https://127.0.0.1:6443"
    assert creds.ca_path == str(tmp_path / "pki/ca.crt")
    assert creds.cert_path == str(tmp_path / "pki/admin.crt")
    assert creds.key_path == "/abs/admin.key"
    assert creds.verify is True and creds.token is None and creds.default_namespace == "shop"


def test_inline_data_goes_to_private_files_with_the_decoded_bytes(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    encoded = base64.b64encode(pem).decode()
    path = write(
        tmp_path / "config",
        config(
            cluster={"server": "https://k", "certificate-authority-data": encoded},
            user={"client-certificate-data": encoded, "client-key-data": encoded},
        ),
    )

    creds = from_kubeconfig([path])
    again = from_kubeconfig([path])  # every re-login loads credentials again

    assert (again.ca_path, again.cert_path, again.key_path) == (creds.ca_path, creds.cert_path, creds.key_path)
    for written in (creds.ca_path, creds.cert_path, creds.key_path):
        assert written is not None
        assert Path(written).read_bytes() == pem
        assert stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert creds.ca_path is not None
    os.unlink(creds.ca_path)
    rewritten = from_kubeconfig([path]).ca_path  # a removed file is written again
    assert rewritten is not None and Path(rewritten).read_bytes() == pem


def test_tokens_inline_or_from_a_file_and_insecure_skip_verify(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    inline = write(tmp_path / "a", config(cluster={"server": "https://k"}, user={"token": "abc"}))
    from_file = write(
        tmp_path / "b",
        config(cluster={"server": "https://k", "insecure-skip-tls-verify": True}, user={"tokenFile": "token"}),
    )

    assert from_kubeconfig([inline]).token == "abc"
    creds = from_kubeconfig([from_file])
    assert creds.token == "from-file" and creds.token_path == str(tmp_path / "token")
    assert creds.verify is False


def test_several_files_merge_and_the_first_of_each_name_wins(tmp_path: Path) -> None:
    first = write(
        tmp_path / "first",
        {"current-context": "dev", "clusters": [{"name": "c", "cluster": {"server": "https://first"}}]},
    )
    second = write(
        tmp_path / "second",
        config(cluster={"server": "https://second"}, user={"token": "t"}, current="other"),
    )

    creds = from_kubeconfig([first, tmp_path / "missing", second])

    assert creds.server == "https://first" and creds.token == "t"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (config(cluster={"server": "https://k"}, user={}, current="nope"), "current-context 'nope' is not defined"),
        (config(cluster={}, user={}), "has no server"),
        (
            {"current-context": "dev", "contexts": [{"name": "dev", "context": {"cluster": "x"}}]},
            "undefined cluster 'x'",
        ),
    ],
)
def test_broken_kubeconfigs_say_what_is_wrong(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_kubeconfig([write(tmp_path / "config", doc)])


def test_no_kubeconfig_at_all_names_the_places_looked_at(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no in-cluster service account and no kubeconfig at .*nowhere"):
        from_kubeconfig([tmp_path / "nowhere"])


def test_only_auth_providers_need_the_client_library(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain", config(cluster={"server": "https://k"}, user={"token": "t"}))
    exec_ = write(
        tmp_path / "exec", config(cluster={"server": "https://k"}, user={"exec": {"command": "aws", "args": []}})
    )
    provider = write(tmp_path / "gcp", config(cluster={"server": "https://k"}, user={"auth-provider": {"name": "gcp"}}))

    assert needs_client_library([plain]) is False
    assert needs_client_library([exec_]) is False  # run by kubeconfig.py itself, and again when due
    assert needs_client_library([provider]) is True


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text("ca")
    (tmp_path / "namespace").write_text("webhook-operator")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    assert kubeconfig.in_cluster_available(tmp_path)
    creds = in_cluster(tmp_path)

    assert creds.server == "https://[fd00::1]:443"
    assert creds.token == "sa-token" and creds.token_path == str(tmp_path / "token")
    assert creds.ca_path == str(tmp_path / "ca.crt") and creds.default_namespace == "webhook-operator"
