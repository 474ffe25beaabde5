"""Admission of spec.filter, spec.tls and spec.autoDisable by a real API server loaded with crds/."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.integration.test_crd_admission import (
    KubectlFn,
    Manifest,
    apply,
    assert_rejected,
    explain,
    get,
    minimal_webhook,
)

pytestmark = pytest.mark.integration


def controls_webhook() -> Manifest:
    manifest = minimal_webhook("controls")
    manifest["spec"].update(
        filter='event.type.startsWith("User.") && event.data.plan == "pro"',
        tls={"caSecretRef": {"name": "hooks-ca", "key": "ca.crt"}, "clientCertSecretRef": {"name": "hooks-client"}},
        autoDisable={"afterFailingFor": "120h"},
    )
    return manifest


def test_every_delivery_control_is_accepted_and_stored_unchanged(kubectl: KubectlFn, namespace: str) -> None:
    manifest = controls_webhook()
    apply(kubectl, namespace, manifest)
    assert get(kubectl, namespace, "webhook/controls")["spec"]["tls"] == manifest["spec"]["tls"]
    assert get(kubectl, namespace, "webhook/controls")["spec"]["autoDisable"] == {"afterFailingFor": "120h"}


@pytest.mark.parametrize("duration", ["0s", "30s", "1h30m", "500ms", "2.5h"])
def test_go_durations_are_accepted(kubectl: KubectlFn, namespace: str, duration: str) -> None:
    manifest = minimal_webhook()
    manifest["spec"]["autoDisable"] = {"afterFailingFor": duration}
    apply(kubectl, namespace, manifest)


def test_the_ca_key_defaults_to_ca_crt(kubectl: KubectlFn, namespace: str) -> None:
    manifest = minimal_webhook()
    manifest["spec"]["tls"] = {"caSecretRef": {"name": "hooks-ca"}}
    apply(kubectl, namespace, manifest)
    assert get(kubectl, namespace, "webhook/minimal")["spec"]["tls"]["caSecretRef"] == {
        "name": "hooks-ca",
        "key": "ca.crt",
    }


def spec_field(field: str, value: Any) -> Any:
    def mutate(manifest: Manifest) -> None:
        manifest["spec"][field] = value

    return mutate


REJECTIONS = [
    pytest.param(spec_field("filter", "x" * 4097), "4096", id="filter-too-long"),
    pytest.param(spec_field("filter", ""), "spec.filter", id="filter-empty"),
    pytest.param(spec_field("tls", {}), "spec.tls must set caSecretRef, clientCertSecretRef or both", id="tls-empty"),
    pytest.param(
        spec_field("tls", {"caSecretRef": {"name": "Hooks_CA"}}),
        "spec.tls.caSecretRef.name must be a Secret name",
        id="ca-name-not-dns",
    ),
    pytest.param(
        spec_field("tls", {"caSecretRef": {"key": "ca.crt"}}),
        "spec.tls.caSecretRef.name: Required value",
        id="ca-no-name",
    ),
    pytest.param(
        spec_field("tls", {"caSecretRef": {"name": "hooks-ca", "key": "ca/crt"}}),
        "spec.tls.caSecretRef.key must be a Secret data key",
        id="ca-key-slash",
    ),
    pytest.param(
        spec_field("tls", {"clientCertSecretRef": {"name": "-client"}}),
        "spec.tls.clientCertSecretRef.name must be a Secret name",
        id="client-name-not-dns",
    ),
    *[
        pytest.param(
            spec_field("autoDisable", {"afterFailingFor": bad}),
            "spec.autoDisable.afterFailingFor must be a duration such as 120h",
            id=f"duration-{bad!r}",
        )
        for bad in ["5 days", "120", "-1h", "5d", "h", ""]
    ],
]


@pytest.mark.parametrize(("mutate", "message"), REJECTIONS)
def test_bad_delivery_controls_are_rejected_with_a_message_saying_what_to_fix(
    kubectl: KubectlFn, namespace: str, mutate: Any, message: str
) -> None:
    manifest = copy.deepcopy(controls_webhook())
    mutate(manifest)
    assert_rejected(kubectl, namespace, manifest, message)


def test_kubectl_explain_describes_the_delivery_controls(kubectl: KubectlFn) -> None:
    assert "Server certificates are always verified" in explain(kubectl, "webhook.spec.tls")
    assert "A CEL expression over the variable event" in " ".join(
        kubectl("explain", "webhook.spec.filter").stdout.split()
    )
    explained = " ".join(kubectl("explain", "webhook.spec.autoDisable.afterFailingFor").stdout.split())
    assert "--auto-disable-after" in explained
