"""Admission of spec.rateLimit and spec.ordering by a real API server loaded with crds/."""

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


def limited_webhook() -> Manifest:
    manifest = minimal_webhook("limited")
    manifest["spec"].update(rateLimit={"requestsPerSecond": 10, "burst": 20}, ordering="Ordered")
    return manifest


def test_rate_limit_and_ordering_are_accepted_and_stored_unchanged(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, limited_webhook())
    spec = get(kubectl, namespace, "webhook/limited")["spec"]
    assert spec["rateLimit"] == {"requestsPerSecond": 10, "burst": 20}
    assert spec["ordering"] == "Ordered"


@pytest.mark.parametrize("rate", [0.5, 1, 10000, 0.001])
def test_fractional_and_boundary_rates_are_accepted_and_burst_may_be_left_out(
    kubectl: KubectlFn, namespace: str, rate: float
) -> None:
    manifest = minimal_webhook()
    manifest["spec"]["rateLimit"] = {"requestsPerSecond": rate}
    apply(kubectl, namespace, manifest)
    assert get(kubectl, namespace, "webhook/minimal")["spec"]["rateLimit"] == {"requestsPerSecond": rate}


def test_ordering_defaults_to_unordered(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, minimal_webhook())
    assert get(kubectl, namespace, "webhook/minimal")["spec"]["ordering"] == "Unordered"


def spec_field(field: str, value: Any) -> Any:
    def mutate(manifest: Manifest) -> None:
        manifest["spec"][field] = value

    return mutate


RATE_MESSAGE = "spec.rateLimit.requestsPerSecond must be more than 0 and at most 10000"
BURST_MESSAGE = "spec.rateLimit.burst must be a whole number from 1 to 100000"
REJECTIONS = [
    pytest.param(spec_field("rateLimit", {"requestsPerSecond": 0}), RATE_MESSAGE, id="rate-zero"),
    pytest.param(spec_field("rateLimit", {"requestsPerSecond": -5}), RATE_MESSAGE, id="rate-negative"),
    pytest.param(spec_field("rateLimit", {"requestsPerSecond": 10001}), RATE_MESSAGE, id="rate-too-high"),
    pytest.param(
        spec_field("rateLimit", {"requestsPerSecond": "ten"}), "spec.rateLimit.requestsPerSecond", id="rate-text"
    ),
    pytest.param(
        spec_field("rateLimit", {"burst": 5}), "spec.rateLimit.requestsPerSecond: Required value", id="no-rate"
    ),
    pytest.param(spec_field("rateLimit", {"requestsPerSecond": 5, "burst": 0}), BURST_MESSAGE, id="burst-zero"),
    pytest.param(spec_field("rateLimit", {"requestsPerSecond": 5, "burst": -1}), BURST_MESSAGE, id="burst-negative"),
    pytest.param(spec_field("rateLimit", {"requestsPerSecond": 5, "burst": 100001}), BURST_MESSAGE, id="burst-huge"),
    pytest.param(
        spec_field("rateLimit", {"requestsPerSecond": 5, "burst": 1.5}), "spec.rateLimit.burst", id="burst-frac"
    ),
    pytest.param(spec_field("ordering", "ordered"), 'supported values: "Unordered", "Ordered"', id="ordering-case"),
    pytest.param(spec_field("ordering", "FIFO"), 'supported values: "Unordered", "Ordered"', id="ordering-unknown"),
]


@pytest.mark.parametrize(("mutate", "message"), REJECTIONS)
def test_bad_rate_limits_and_orderings_are_rejected_with_a_message_saying_what_to_fix(
    kubectl: KubectlFn, namespace: str, mutate: Any, message: str
) -> None:
    manifest = copy.deepcopy(limited_webhook())
    mutate(manifest)
    assert_rejected(kubectl, namespace, manifest, message)


def test_kubectl_explain_describes_rate_limit_and_ordering(kubectl: KubectlFn) -> None:
    assert "are never dropped" in explain(kubectl, "webhook.spec.rateLimit")
    assert "Defaults to requestsPerSecond rounded up" in " ".join(
        kubectl("explain", "webhook.spec.rateLimit.burst").stdout.split()
    )
    explained = " ".join(kubectl("explain", "webhook.spec.ordering").stdout.split())
    assert "blocks the ones behind it" in explained
    assert "rateLimitedMs" in " ".join(
        kubectl("explain", "webhookevent.status.deliveries.rateLimitedMs").stdout.split()
    ) or "Milliseconds the last attempt waited" in " ".join(
        kubectl("explain", "webhookevent.status.deliveries.rateLimitedMs").stdout.split()
    )
