"""Admission of Webhook and WebhookEvent objects by a real API server loaded with the CRDs in crds/."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.integration

KubectlFn = Callable[..., subprocess.CompletedProcess[str]]
Manifest = dict[str, Any]
Mutation = Callable[[Manifest], None]

API_VERSION = "webhook-operator.io/v1alpha1"
RESERVED_HEADERS = [
    "Content-Type",
    "content-length",
    "HOST",
    "Transfer-Encoding",
    "Connection",
    "User-Agent",
    "Webhook-Id",
    "webhook-timestamp",
    "Webhook-Signature",
    "Logto-Signature-Sha-256",
]


def full_webhook(name: str = "billing-sync") -> Manifest:
    """The Webhook of the product contract, every spec field set."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {
            "url": "https://hooks.example.com/identity",
            "events": ["User.Created", "Organization.*"],
            "enabled": True,
            "description": "Sync users into billing",
            "headers": [
                {"name": "X-Team", "value": "billing"},
                {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "billing-token", "key": "token"}}},
            ],
            "signingKeySecretRef": {"name": "my-key", "key": "signingKey"},
            "retry": {"maxRetries": 3, "backoffSeconds": 1, "maxBackoffSeconds": 60, "timeoutSeconds": 10},
            "ordering": "Unordered",  # defaulted, so set here to compare the stored spec whole
        },
    }


def minimal_webhook(name: str = "minimal") -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {"url": "https://hooks.example.com/identity", "events": ["User.Created"]},
    }


def webhook_event(name: str = "user-created", event: str = "User.Created", **spec: Any) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "WebhookEvent",
        "metadata": {"name": name},
        "spec": {"event": event, **spec},
    }


def apply(
    kubectl: KubectlFn, namespace: str, manifest: Manifest, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=check)


def assert_rejected(kubectl: KubectlFn, namespace: str, manifest: Manifest, message: str) -> None:
    """``kubectl apply`` fails with ``message`` in its error, and nothing was stored."""
    result = apply(kubectl, namespace, manifest, check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr
    name = manifest["metadata"]["name"]
    assert kubectl("get", "-n", namespace, f"{manifest['kind'].lower()}/{name}", check=False).returncode != 0


def explain(kubectl: KubectlFn, path: str, wait_s: float = 60.0) -> str:
    """``kubectl explain PATH`` with white space folded, waiting while a new schema is published."""
    deadline = time.monotonic() + wait_s
    while True:
        result = kubectl("explain", path, check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def get(kubectl: KubectlFn, namespace: str, resource: str) -> Manifest:
    result = kubectl("get", "-n", namespace, resource, "-o", "json")
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def table(kubectl: KubectlFn, namespace: str, resource: str) -> list[list[str]]:
    """`kubectl get` output split into rows of cells (cells never contain spaces here)."""
    return [line.split() for line in kubectl("get", "-n", namespace, resource).stdout.splitlines()]


def write_status(
    kubectl: KubectlFn, namespace: str, resource: str, status: Manifest, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Replace the whole status through the status subresource, as the operator does."""
    patch = json.dumps([{"op": "add", "path": "/status", "value": status}])
    return kubectl(
        "patch", "-n", namespace, resource, "--subresource=status", "--type=json", "-p", patch, *extra, check=check
    )


def written_status(kubectl: KubectlFn, namespace: str, resource: str, status: Manifest) -> Manifest:
    """The status the API server would store, after pruning and validation (server dry run).

    A dry run cannot race with an operator that may be watching every namespace of a shared cluster.
    """
    result = write_status(kubectl, namespace, resource, status, "--dry-run=server", "-o", "json")
    stored = json.loads(result.stdout)["status"]
    assert isinstance(stored, dict)
    return stored


def set_spec(field: str, value: Any) -> Mutation:
    def mutate(manifest: Manifest) -> None:
        manifest["spec"][field] = value

    return mutate


def drop_spec(field: str) -> Mutation:
    def mutate(manifest: Manifest) -> None:
        del manifest["spec"][field]

    return mutate


def set_headers(*headers: Manifest) -> Mutation:
    return set_spec("headers", list(headers))


def set_retry(**retry: Any) -> Mutation:
    return set_spec("retry", retry)


def test_full_webhook_is_accepted_and_stored_unchanged(kubectl: KubectlFn, namespace: str) -> None:
    manifest = full_webhook()
    apply(kubectl, namespace, manifest)
    stored = get(kubectl, namespace, "webhook/billing-sync")
    assert stored["spec"] == manifest["spec"]


def test_minimal_webhook_gets_enabled_and_every_retry_default(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, minimal_webhook())
    spec = get(kubectl, namespace, "webhook/minimal")["spec"]
    assert spec["enabled"] is True
    assert spec["retry"] == {"maxRetries": 3, "backoffSeconds": 1, "maxBackoffSeconds": 60, "timeoutSeconds": 10}
    assert "headers" not in spec
    assert "signingKeySecretRef" not in spec


def test_partial_retry_and_signing_key_ref_get_the_missing_defaults(kubectl: KubectlFn, namespace: str) -> None:
    manifest = minimal_webhook()
    manifest["spec"]["retry"] = {"maxRetries": 0, "backoffSeconds": 0.5}
    manifest["spec"]["signingKeySecretRef"] = {"name": "own-key"}
    manifest["spec"]["enabled"] = False
    apply(kubectl, namespace, manifest)
    spec = get(kubectl, namespace, "webhook/minimal")["spec"]
    assert spec["enabled"] is False
    assert spec["retry"] == {"maxRetries": 0, "backoffSeconds": 0.5, "maxBackoffSeconds": 60, "timeoutSeconds": 10}
    assert spec["signingKeySecretRef"] == {"name": "own-key", "key": "signingKey"}


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com",
        "HTTPS://Hooks.Example.com:8443/a/b?c=d&e=f",
        "http://receiver.shop.svc.cluster.local:8080/hook",
        "https://hooks.example.com/path?mail=a@b.c",
        "https://[2001:db8::1]:8443/hook",
        "https://203.0.113.7/hook",
        "https://hooks.example.com/" + "a" * (2048 - len("https://hooks.example.com/")),
    ],
    ids=["bare-host", "upper-case-port-query", "http-service", "at-in-query", "ipv6", "ipv4", "exactly-2048"],
)
def test_webhook_url_accepted_at_admission(kubectl: KubectlFn, namespace: str, url: str) -> None:
    # Destination policy (http, private addresses) is the operator's job and reported as Ready=False.
    manifest = minimal_webhook()
    manifest["spec"]["url"] = url
    apply(kubectl, namespace, manifest)
    assert get(kubectl, namespace, "webhook/minimal")["spec"]["url"] == url


def test_wildcards_and_up_to_100_events_are_accepted(kubectl: KubectlFn, namespace: str) -> None:
    events = ["*", "User.*", "User.Data.Updated", "A1.b2", *[f"Custom.Event{i}" for i in range(96)]]
    manifest = minimal_webhook()
    manifest["spec"]["events"] = events
    apply(kubectl, namespace, manifest)
    assert get(kubectl, namespace, "webhook/minimal")["spec"]["events"] == events


def test_fifty_headers_with_token_names_and_empty_value_are_accepted(kubectl: KubectlFn, namespace: str) -> None:
    headers = [{"name": "X-Empty", "value": ""}, {"name": "x_custom.id~1!#$%&'*+^`|", "value": "tab\tok"}]
    headers += [{"name": f"X-H{i}", "value": str(i)} for i in range(48)]
    manifest = minimal_webhook()
    manifest["spec"]["headers"] = headers
    apply(kubectl, namespace, manifest)
    assert get(kubectl, namespace, "webhook/minimal")["spec"]["headers"] == headers


REJECTIONS: list[Any] = [
    pytest.param(drop_spec("url"), "spec.url: Required value", id="url-missing"),
    pytest.param(set_spec("url", "hooks.example.com/identity"), "is not a valid absolute URL", id="url-no-scheme"),
    pytest.param(set_spec("url", "https://hooks example.com/"), "is not a valid absolute URL", id="url-space-in-host"),
    pytest.param(set_spec("url", "ftp://hooks.example.com/x"), "must use the http or https scheme", id="url-ftp"),
    pytest.param(set_spec("url", "file:///etc/passwd"), "must use the http or https scheme", id="url-file"),
    pytest.param(set_spec("url", "https:///identity"), "must include a host", id="url-empty-host"),
    pytest.param(set_spec("url", "https:hooks.example.com"), "must include a host", id="url-opaque"),
    pytest.param(
        set_spec("url", "https://user:secret@hooks.example.com/x"), "must not contain user info", id="url-userinfo"
    ),
    pytest.param(set_spec("url", "https://token@hooks.example.com"), "must not contain user info", id="url-user-only"),
    pytest.param(
        set_spec("url", "https://hooks.example.com/" + "a" * (2049 - len("https://hooks.example.com/"))),
        "2048",
        id="url-2049-chars",
    ),
    pytest.param(drop_spec("events"), "spec.events: Required value", id="events-missing"),
    pytest.param(set_spec("events", []), "should have at least 1 items", id="events-empty"),
    pytest.param(
        set_spec("events", [f"Custom.Event{i}" for i in range(101)]), "must have at most 100 items", id="events-101"
    ),
    pytest.param(set_spec("events", ["User.Created", "User.Created"]), "Duplicate value", id="events-duplicate"),
    *[
        pytest.param(set_spec("events", [bad]), "spec.events entries must be an event name", id=f"event-{bad!r}")
        for bad in ["User..Created", "User.", ".User", "1User", "User-Created", "*.Created", "User.**", "User*", ""]
    ],
    pytest.param(set_spec("description", "d" * 257), "256", id="description-257-chars"),
    pytest.param(
        set_headers({"name": "X Team", "value": "billing"}), "header name must be an HTTP token", id="header-name-space"
    ),
    pytest.param(
        set_headers({"name": "X-Team:", "value": "billing"}),
        "header name must be an HTTP token",
        id="header-name-colon",
    ),
    pytest.param(
        set_headers({"name": "X-Team", "value": "a\r\nX-Injected: 1"}),
        "header value must not contain CR, LF or NUL",
        id="header-value-crlf",
    ),
    pytest.param(
        set_headers({"name": "X-Team", "value": "line\nbreak"}),
        "header value must not contain CR, LF or NUL",
        id="header-value-lf",
    ),
    *[
        pytest.param(
            set_headers({"name": reserved, "value": "x"}), "header name is reserved by the operator", id=reserved
        )
        for reserved in RESERVED_HEADERS
    ],
    pytest.param(
        set_headers({"name": "Authorization", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        "must set exactly one of value (a literal) or valueFrom.secretKeyRef",
        id="header-value-and-valueFrom",
    ),
    pytest.param(
        set_headers({"name": "Authorization"}),
        "must set exactly one of value (a literal) or valueFrom.secretKeyRef",
        id="header-neither-value",
    ),
    pytest.param(
        set_headers({"name": "X-Team", "value": "a"}, {"name": "x-team", "value": "b"}),
        "spec.headers names must be unique ignoring case",
        id="header-duplicate-ignoring-case",
    ),
    pytest.param(
        set_headers(*[{"name": f"X-H{i}", "value": "v"} for i in range(51)]),
        "must have at most 50 items",
        id="headers-51",
    ),
    pytest.param(set_retry(maxRetries=11), "should be less than or equal to 10", id="maxRetries-11"),
    pytest.param(set_retry(maxRetries=-1), "should be greater than or equal to 0", id="maxRetries-negative"),
    pytest.param(set_retry(timeoutSeconds=0), "should be greater than or equal to 1", id="timeoutSeconds-0"),
    pytest.param(set_retry(timeoutSeconds=61), "should be less than or equal to 60", id="timeoutSeconds-61"),
    pytest.param(
        set_retry(backoffSeconds=30, maxBackoffSeconds=10),
        "spec.retry.maxBackoffSeconds must be greater than or equal to spec.retry.backoffSeconds",
        id="maxBackoff-below-backoff",
    ),
    pytest.param(
        set_retry(backoffSeconds=120),
        "spec.retry.maxBackoffSeconds must be greater than or equal to spec.retry.backoffSeconds",
        id="backoff-above-default-maxBackoff",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), REJECTIONS)
def test_invalid_webhook_is_rejected_with_a_message_naming_the_problem(
    kubectl: KubectlFn, namespace: str, mutate: Mutation, message: str
) -> None:
    manifest = copy.deepcopy(full_webhook())
    mutate(manifest)
    assert_rejected(kubectl, namespace, manifest, message)


def test_reserved_header_check_ignores_case_but_allows_similar_names(kubectl: KubectlFn, namespace: str) -> None:
    manifest = minimal_webhook()
    manifest["spec"]["headers"] = [{"name": "X-Webhook-Id", "value": "1"}, {"name": "Content-Type-Hint", "value": "2"}]
    apply(kubectl, namespace, manifest)


def test_kubectl_explain_describes_the_retry_fields(kubectl: KubectlFn) -> None:
    # The aggregated OpenAPI document picks up a new CRD a moment after it is Established.
    deadline = time.monotonic() + 60
    while True:
        result = kubectl("explain", "webhook.spec.retry", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Retry policy for deliveries" in text
    for field, words in [
        ("maxRetries", "Retries after the first attempt, 0 to 10. Defaults to 3."),
        ("backoffSeconds", "Delay before the first retry"),
        ("maxBackoffSeconds", "Upper bound of any delay"),
        ("timeoutSeconds", "Time allowed for one attempt"),
    ]:
        assert field in text
        assert words in text
    explained_event = kubectl("explain", "webhookevent.spec.event").stdout
    assert "No wildcards" in " ".join(explained_event.split())


def test_webhook_status_written_by_the_operator_is_kept_whole_and_shown_in_columns(
    kubectl: KubectlFn, namespace: str
) -> None:
    apply(kubectl, namespace, full_webhook())
    status = {
        "observedGeneration": 1,
        "signingKeySecretName": "billing-sync-signing-key",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Reconciled",
                "message": "delivering to https://hooks.example.com/identity",
                "lastTransitionTime": "2026-11-28T03:00:00Z",
                "observedGeneration": 1,
            },
            {
                "type": "Healthy",
                "status": "True",
                "reason": "SuccessRateOK",
                "message": "99.80% of 512 requests in 24h",
                "lastTransitionTime": "2026-11-28T03:00:00Z",
                "observedGeneration": 1,
            },
        ],
        "health": {
            "window": "24h",
            "requests": 512,
            "succeeded": 511,
            "failed": 1,
            "successRate": "99.80%",
            "state": "Healthy",
            "lastDeliveryTime": "2026-11-28T03:00:01Z",
            "lastStatusCode": 200,
            "buckets": ["1795834800:300:1", "1795835100:211:0"],
        },
        "lastTest": {
            "requestedAt": "2026-11-28T02:59:00Z",
            "completedAt": "2026-11-28T02:59:01Z",
            "results": [
                {"event": "User.Created", "statusCode": 200, "durationMs": 12},
                {"event": "Organization.Created", "durationMs": 10000, "error": "timeout"},
            ],
        },
        "keyRotation": {
            "requestedAt": "now",
            "rotatedAt": "2026-11-28T02:00:00Z",
            "previousKeyExpiresAt": "2026-11-29T02:00:00Z",
            "message": "rotated",
        },
    }
    assert written_status(kubectl, namespace, "webhook/billing-sync", status) == status
    write_status(kubectl, namespace, "webhook/billing-sync", status)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "--timeout=10s", "webhook/billing-sync")
    rows = table(kubectl, namespace, "webhooks")
    assert rows[0] == ["NAME", "URL", "ENABLED", "HEALTH", "SUCCESS", "REQUESTS", "READY", "AGE"]
    assert rows[1][:7] == [
        "billing-sync",
        "https://hooks.example.com/identity",
        "true",
        "Healthy",
        "99.80%",
        "512",
        "True",
    ]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ({"health": {"state": "Great"}}, "Unsupported value"),
        ({"health": {"buckets": ["yesterday"]}}, "status.health.buckets[0]"),
        ({"conditions": [{"type": "Ready", "status": "Yes"}]}, "Unsupported value"),
    ],
    ids=["unknown-health-state", "malformed-bucket", "condition-status-not-true-false-unknown"],
)
def test_malformed_webhook_status_is_rejected(
    kubectl: KubectlFn, namespace: str, status: Manifest, message: str
) -> None:
    apply(kubectl, namespace, minimal_webhook())
    result = write_status(kubectl, namespace, "webhook/minimal", status, "--dry-run=server", check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_short_names_plurals_and_the_category_find_the_right_kinds(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, minimal_webhook())
    apply(kubectl, namespace, webhook_event())
    webhook = ["webhook.webhook-operator.io/minimal"]
    event = ["webhookevent.webhook-operator.io/user-created"]
    for resource, expected in [("wh", webhook), ("webhooks", webhook), ("whe", event), ("webhookevents", event)]:
        assert kubectl("get", "-n", namespace, resource, "-o", "name").stdout.split() == expected, resource
    in_category = kubectl("get", "-n", namespace, "webhook-operator", "-o", "name").stdout.split()
    assert sorted(in_category) == webhook + event


@pytest.mark.parametrize(
    "data",
    [
        {"id": "u_123", "email": "a@b.c"},
        {"user": {"id": "u1", "roles": ["admin", "billing"], "profile": {"age": 42, "verified": True}}},
        [1, "two", {"three": 3.5}, [False]],
        "plain text",
        42,
        True,
        {},
    ],
    ids=["object", "nested-object", "array", "string", "number", "boolean", "empty-object"],
)
def test_webhookevent_accepts_any_json_data_and_stores_it_unchanged(
    kubectl: KubectlFn, namespace: str, data: Any
) -> None:
    apply(kubectl, namespace, webhook_event(data=data))
    assert get(kubectl, namespace, "whe/user-created")["spec"] == {"event": "User.Created", "data": data}


def test_webhookevent_keeps_null_data_and_nulls_inside_it(kubectl: KubectlFn, namespace: str) -> None:
    # `kubectl create`, not `apply`: client-side apply drops null map entries as deletion markers.
    for name, data in [("null-data", None), ("null-inside", {"deletedAt": None, "tags": [None]})]:
        kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(webhook_event(name=name, data=data)))
    assert get(kubectl, namespace, "whe/null-data")["spec"] == {"event": "User.Created", "data": None}
    assert get(kubectl, namespace, "whe/null-inside")["spec"]["data"] == {"deletedAt": None, "tags": [None]}


def test_webhookevent_without_data_is_accepted_from_generate_name(kubectl: KubectlFn, namespace: str) -> None:
    manifest = webhook_event()
    manifest["metadata"] = {"generateName": "user-created-"}
    created = kubectl("create", "-n", namespace, "-f", "-", "-o", "name", input=json.dumps(manifest)).stdout.strip()
    assert created.startswith("webhookevent.webhook-operator.io/user-created-")
    assert get(kubectl, namespace, created)["spec"] == {"event": "User.Created"}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("User.*", "wildcards like User.* or * belong in a Webhook's spec.events"),
        ("*", "wildcards like User.* or * belong in a Webhook's spec.events"),
        ("User..Created", "spec.event must be an event name such as User.Created"),
        ("1User", "spec.event must be an event name such as User.Created"),
        ("User Created", "spec.event must be an event name such as User.Created"),
        ("", "spec.event must be an event name such as User.Created"),
        ("E" * 254, "253"),
    ],
    ids=["prefix-wildcard", "star", "empty-segment", "leading-digit", "space", "empty", "254-chars"],
)
def test_webhookevent_with_wildcard_or_malformed_event_is_rejected(
    kubectl: KubectlFn, namespace: str, event: str, message: str
) -> None:
    result = apply(kubectl, namespace, webhook_event(event=event), check=False)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr


def test_webhookevent_without_spec_or_event_is_rejected(kubectl: KubectlFn, namespace: str) -> None:
    manifest = webhook_event()
    del manifest["spec"]["event"]
    result = apply(kubectl, namespace, manifest, check=False)
    assert result.returncode != 0
    assert "spec.event: Required value" in result.stderr
    del manifest["spec"]
    result = apply(kubectl, namespace, manifest, check=False)
    assert result.returncode != 0
    assert "spec: Required value" in result.stderr


@pytest.mark.parametrize(
    "patch",
    [{"spec": {"event": "User.Deleted"}}, {"spec": {"data": {"id": "u_999"}}}, {"spec": {"data": None}}],
    ids=["event", "data", "drop-data"],
)
def test_webhookevent_spec_cannot_change_after_creation(kubectl: KubectlFn, namespace: str, patch: Manifest) -> None:
    apply(kubectl, namespace, webhook_event(data={"id": "u_123"}))
    result = kubectl("patch", "-n", namespace, "whe/user-created", "--type=merge", "-p", json.dumps(patch), check=False)
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr
    assert get(kubectl, namespace, "whe/user-created")["spec"] == {"event": "User.Created", "data": {"id": "u_123"}}


def test_webhookevent_annotations_and_reapplying_the_same_spec_are_allowed(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_event(data={"id": "u_123"}))
    apply(kubectl, namespace, webhook_event(data={"id": "u_123"}))
    kubectl(
        "annotate",
        "-n",
        namespace,
        "whe/user-created",
        "webhook-operator.io/redeliver-requested-at=2026-11-28T03:00:00Z",
    )


def test_webhookevent_status_is_kept_whole_and_shown_in_columns(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_event())
    status = {
        "observedGeneration": 1,
        "phase": "PartiallyFailed",
        "completionTime": "2026-11-28T03:00:40Z",
        "delivered": "1/2",
        "deliveries": [
            {
                "webhook": "billing-sync",
                "id": "msg_2f1d8c0a9b7e6d5c4b3a29180706f5e4",
                "outcome": "Succeeded",
                "attempts": 2,
                "statusCode": 200,
                "firstAttemptTime": "2026-11-28T03:00:00Z",
                "lastAttemptTime": "2026-11-28T03:00:01Z",
                "durationMs": 35,
                "error": "",
                "responseBody": "ok",
            },
            {
                "webhook": "crm",
                "id": "msg_0000",
                "outcome": "Failed",
                "attempts": 4,
                "firstAttemptTime": "2026-11-28T03:00:00Z",
                "lastAttemptTime": "2026-11-28T03:00:40Z",
                "nextAttemptTime": "2026-11-28T03:00:40Z",
                "durationMs": 10000,
                "error": "timeout",
            },
        ],
        "redelivery": {"requestedAt": "again", "startedAt": "2026-11-28T02:59:59Z"},
    }
    assert written_status(kubectl, namespace, "whe/user-created", status) == status
    write_status(kubectl, namespace, "whe/user-created", status)
    rows = table(kubectl, namespace, "webhookevents")
    assert rows[0] == ["NAME", "EVENT", "PHASE", "DELIVERED", "AGE"]
    assert rows[1][:4] == ["user-created", "User.Created", "PartiallyFailed", "1/2"]


def test_webhookevents_can_be_selected_by_event_name(kubectl: KubectlFn, namespace: str) -> None:
    apply(kubectl, namespace, webhook_event(name="created", event="User.Created"))
    apply(kubectl, namespace, webhook_event(name="deleted", event="User.Deleted"))
    selected = kubectl("get", "-n", namespace, "whe", "--field-selector=spec.event=User.Deleted", "-o", "name")
    assert selected.stdout.split() == ["webhookevent.webhook-operator.io/deleted"]
