"""Typed views of Webhook specs: the defaults match the CRD schema in crds/, the one source of truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook_operator.model import (
    Header,
    SecretKeyRef,
    format_time,
    format_time_ms,
    parse_time,
    parse_webhook_spec,
    signing_secret_name,
)
from webhook_operator.retry import RetryPolicy

WEBHOOK_CRD = Path(__file__).resolve().parents[2] / "crds" / "webhooks.webhook-operator.io.yaml"


@pytest.fixture(scope="module")
def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(WEBHOOK_CRD.read_text(encoding="utf-8"))
    [version] = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_webhook_spec({"url": "https://hooks.example.com/x", "events": ["User.Created"]})
    assert spec.url == "https://hooks.example.com/x"
    assert spec.events == ("User.Created",)
    assert spec.enabled is True
    assert spec.description == ""
    assert spec.headers == ()
    assert spec.signing_key_ref is None
    assert spec.retry == RetryPolicy(max_retries=3, backoff_seconds=1, max_backoff_seconds=60, timeout_seconds=10)


def test_retry_defaults_equal_the_crd_schema_defaults(spec_schema: dict[str, Any]) -> None:
    retry = spec_schema["properties"]["retry"]
    assert retry["default"] == {}, "an absent retry must be defaulted as a whole by the API server"
    schema_defaults = {name: prop["default"] for name, prop in retry["properties"].items()}
    assert set(schema_defaults) == {"maxRetries", "backoffSeconds", "maxBackoffSeconds", "timeoutSeconds"}
    parsed = parse_webhook_spec({"url": "https://h.example", "events": ["A"]}).retry
    assert {
        "maxRetries": parsed.max_retries,
        "backoffSeconds": parsed.backoff_seconds,
        "maxBackoffSeconds": parsed.max_backoff_seconds,
        "timeoutSeconds": parsed.timeout_seconds,
    } == schema_defaults
    # What the API server fills in and what the model assumes are the same policy.
    assert parse_webhook_spec({"url": "u", "events": ["A"], "retry": schema_defaults}).retry == parsed


def test_other_defaults_equal_the_crd_schema_defaults(spec_schema: dict[str, Any]) -> None:
    props = spec_schema["properties"]
    assert parse_webhook_spec({"url": "u", "events": ["A"]}).enabled is props["enabled"]["default"]
    ref = parse_webhook_spec({"url": "u", "events": ["A"], "signingKeySecretRef": {"name": "mine"}}).signing_key_ref
    assert ref == SecretKeyRef("mine", props["signingKeySecretRef"]["properties"]["key"]["default"])


def test_a_partial_retry_keeps_the_defaults_for_the_rest() -> None:
    retry = parse_webhook_spec({"url": "u", "events": ["A"], "retry": {"maxRetries": 0, "backoffSeconds": 0.1}}).retry
    assert retry == RetryPolicy(max_retries=0, backoff_seconds=0.1, max_backoff_seconds=60, timeout_seconds=10)


def test_full_spec_is_typed() -> None:
    spec = parse_webhook_spec(
        {
            "url": "https://hooks.example.com/identity",
            "events": ["User.Created", "Organization.*"],
            "enabled": False,
            "description": "Sync users into billing",
            "headers": [
                {"name": "X-Team", "value": "billing"},
                {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "billing-token", "key": "token"}}},
            ],
            "signingKeySecretRef": {"name": "my-key", "key": "k"},
            "retry": {"maxRetries": 5, "backoffSeconds": 2, "maxBackoffSeconds": 30, "timeoutSeconds": 3},
        }
    )
    assert spec.events == ("User.Created", "Organization.*")
    assert spec.enabled is False
    assert spec.description == "Sync users into billing"
    assert spec.headers == (
        Header("X-Team", value="billing"),
        Header("Authorization", secret=SecretKeyRef("billing-token", "token")),
    )
    assert spec.signing_key_ref == SecretKeyRef("my-key", "k")
    assert spec.retry == RetryPolicy(5, 2.0, 30.0, 3.0)


def test_signing_secret_name_is_the_webhook_name_with_a_suffix() -> None:
    assert signing_secret_name("billing-sync") == "billing-sync-signing-key"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T03:00:01Z", dt.datetime(2026, 11, 28, 3, 0, 1, tzinfo=dt.UTC)),
        ("2026-11-28T03:00:01.250Z", dt.datetime(2026, 11, 28, 3, 0, 1, 250000, tzinfo=dt.UTC)),
        ("2026-11-28T04:00:01+01:00", dt.datetime(2026, 11, 28, 3, 0, 1, tzinfo=dt.UTC)),
        ("2026-11-28T03:00:01", dt.datetime(2026, 11, 28, 3, 0, 1, tzinfo=dt.UTC)),  # naive is UTC
        ("", None),
        ("soon", None),
        (None, None),
        (1795834801, None),
    ],
)
def test_parse_time(text: Any, expected: dt.datetime | None) -> None:
    assert parse_time(text) == expected


def test_times_are_written_in_utc_as_kubernetes_does() -> None:
    local = dt.datetime(2026, 11, 28, 4, 0, 1, 987654, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert format_time(local) == "2026-11-28T03:00:01Z"
    assert format_time_ms(local) == "2026-11-28T03:00:01.987Z"
    assert parse_time(format_time(local)) == local.replace(microsecond=0)


def test_the_kept_body_drops_managed_fields_and_the_last_applied_copy_only() -> None:
    from webhook_operator.model import LAST_APPLIED_ANNOTATION, slim_body

    body = {
        "apiVersion": "webhook-operator.io/v1alpha1",
        "kind": "Webhook",
        "metadata": {
            "name": "billing-sync",
            "namespace": "shop",
            "uid": "u1",
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {LAST_APPLIED_ANNOTATION: '{"spec": {}}', "webhook-operator.io/test-requested-at": "1"},
        },
        "spec": {"url": "https://hooks.example.com/x", "events": ["User.Created"]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }

    slim = slim_body(body)

    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {"webhook-operator.io/test-requested-at": "1"}
    assert {k: v for k, v in slim.items() if k != "metadata"} == {k: v for k, v in body.items() if k != "metadata"}
    assert body["metadata"]["managedFields"] and LAST_APPLIED_ANNOTATION in body["metadata"]["annotations"]
