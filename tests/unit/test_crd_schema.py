"""Structure of the CRD manifests in crds/: names, columns, descriptions and bounded CEL rules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
WEBHOOK_FILE = CRD_DIR / "webhooks.webhook-operator.io.yaml"
EVENT_FILE = CRD_DIR / "webhookevents.webhook-operator.io.yaml"

Node = dict[str, Any]


def load(path: Path) -> Node:
    with path.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict)
    return document


def only_version(crd: Node) -> Node:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    version = versions[0]
    assert isinstance(version, dict)
    return version


def root_schema(crd: Node) -> Node:
    schema = only_version(crd)["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def walk(node: Node, path: str = "", ancestors: tuple[Node, ...] = ()) -> Iterator[tuple[str, Node, tuple[Node, ...]]]:
    """Yield every schema node with its path and the nodes above it."""
    yield path, node, ancestors
    below = (*ancestors, node)
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}", below)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]", below)
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}", below)


def node_at(schema: Node, path: str) -> Node:
    node = schema
    for part in path.strip(".").split("."):
        if part.endswith("[]"):
            node = node["properties"][part[:-2]]["items"]
        else:
            node = node["properties"][part]
    return node


def rules_at(schema: Node, path: str) -> list[str]:
    return [rule["rule"] for rule in node_at(schema, path).get("x-kubernetes-validations", [])]


def regex_in(rule: str) -> re.Pattern[str]:
    """The regex of a rule written as ``self.matches(r'...')`` (RE2 and Python agree on these patterns)."""
    match = re.search(r"""matches\(r(['"])(.*)\1\)""", rule)
    assert match, f"no raw-string regex in rule {rule!r}"
    return re.compile(match.group(2))


@pytest.fixture(scope="module")
def webhook_crd() -> Node:
    return load(WEBHOOK_FILE)


@pytest.fixture(scope="module")
def event_crd() -> Node:
    return load(EVENT_FILE)


@pytest.mark.parametrize(
    ("path", "kind", "plural", "singular", "short_name"),
    [
        (WEBHOOK_FILE, "Webhook", "webhooks", "webhook", "wh"),
        (EVENT_FILE, "WebhookEvent", "webhookevents", "webhookevent", "whe"),
    ],
)
def test_crd_names_group_scope_and_version_follow_the_contract(
    path: Path, kind: str, plural: str, singular: str, short_name: str
) -> None:
    crd = load(path)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.webhook-operator.io"
    assert path.name == f"{plural}.webhook-operator.io.yaml"
    spec = crd["spec"]
    assert spec["group"] == "webhook-operator.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": [short_name],
        "categories": ["webhook-operator"],
    }
    version = only_version(crd)
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}


def test_no_category_shadows_a_resource_name(webhook_crd: Node, event_crd: Node) -> None:
    # kubectl expands categories before resource names: a category "webhooks" would make
    # `kubectl get webhooks` list WebhookEvents too, in a second table.
    names: set[str] = set()
    categories: set[str] = set()
    for crd in (webhook_crd, event_crd):
        crd_names = crd["spec"]["names"]
        names |= {crd_names["plural"], crd_names["singular"], crd_names["kind"].lower(), *crd_names["shortNames"]}
        categories |= set(crd_names["categories"])
    assert categories.isdisjoint(names)


def test_webhook_printer_columns_are_url_enabled_health_success_requests_ready_age(webhook_crd: Node) -> None:
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in only_version(webhook_crd)["additionalPrinterColumns"]]
    assert columns == [
        ("URL", "string", ".spec.url"),
        ("ENABLED", "boolean", ".spec.enabled"),
        ("HEALTH", "string", ".status.health.state"),
        ("SUCCESS", "string", ".status.health.successRate"),
        ("REQUESTS", "integer", ".status.health.requests"),
        ("READY", "string", '.status.conditions[?(@.type=="Ready")].status'),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


def test_webhookevent_printer_columns_are_event_phase_delivered_age(event_crd: Node) -> None:
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in only_version(event_crd)["additionalPrinterColumns"]]
    assert columns == [
        ("EVENT", "string", ".spec.event"),
        ("PHASE", "string", ".status.phase"),
        ("DELIVERED", "string", ".status.delivered"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


@pytest.mark.parametrize("path", [WEBHOOK_FILE, EVENT_FILE], ids=["Webhook", "WebhookEvent"])
def test_every_field_and_column_has_a_description(path: Path) -> None:
    crd = load(path)
    # The API server forbids anything but `type: object` on metadata; kubectl explain describes it anyway.
    missing = [
        p or "<root>"
        for p, node, _ in walk(root_schema(crd))
        if p != ".metadata" and not str(node.get("description", "")).strip()
    ]
    assert root_schema(crd)["properties"]["metadata"] == {"type": "object"}
    assert missing == [], f"fields without description: {missing}"
    assert all(column.get("description") for column in only_version(crd)["additionalPrinterColumns"])


@pytest.mark.parametrize("path", [WEBHOOK_FILE, EVENT_FILE], ids=["Webhook", "WebhookEvent"])
def test_every_node_is_typed_unless_it_preserves_unknown_fields(path: Path) -> None:
    untyped = [
        p
        for p, node, _ in walk(root_schema(load(path)))
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert untyped == []


@pytest.mark.parametrize("path", [WEBHOOK_FILE, EVENT_FILE], ids=["Webhook", "WebhookEvent"])
def test_only_webhookevent_data_preserves_unknown_fields(path: Path) -> None:
    preserving = [p for p, node, _ in walk(root_schema(load(path))) if node.get("x-kubernetes-preserve-unknown-fields")]
    assert preserving == ([".spec.data"] if path == EVENT_FILE else [])


@pytest.mark.parametrize("path", [WEBHOOK_FILE, EVENT_FILE], ids=["Webhook", "WebhookEvent"])
def test_every_cel_rule_has_a_message(path: Path) -> None:
    for node_path, node, _ in walk(root_schema(load(path))):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message", "").strip(), f"rule at {node_path} has no message: {rule['rule']}"


@pytest.mark.parametrize("path", [WEBHOOK_FILE], ids=["Webhook"])
def test_strings_and_lists_seen_by_cel_rules_are_bounded_so_the_cost_estimate_stays_low(path: Path) -> None:
    # A rule on a node sees that node and everything below it; a list above a rule node multiplies its cost.
    schema = root_schema(load(path))
    ruled = [(p, node, anc) for p, node, anc in walk(schema) if node.get("x-kubernetes-validations")]
    assert ruled
    for rule_path, rule_node, ancestors in ruled:
        for sub_path, sub_node, _ in walk(rule_node, rule_path, ancestors):
            if sub_node.get("type") == "string":
                assert "maxLength" in sub_node or "enum" in sub_node, f"{sub_path} needs maxLength"
            if sub_node.get("type") == "array":
                assert "maxItems" in sub_node, f"{sub_path} needs maxItems"
            assert not sub_node.get("x-kubernetes-preserve-unknown-fields"), sub_path
        for ancestor in ancestors:
            if ancestor.get("type") == "array":
                assert "maxItems" in ancestor, f"a list above {rule_path} needs maxItems"


def test_webhook_requires_url_and_events_and_bounds_them(webhook_crd: Node) -> None:
    schema = root_schema(webhook_crd)
    spec = node_at(schema, "spec")
    assert schema["required"] == ["spec"]
    assert sorted(spec["required"]) == ["events", "url"]
    assert spec["properties"]["url"]["maxLength"] == 2048
    events = spec["properties"]["events"]
    assert (events["minItems"], events["maxItems"], events["x-kubernetes-list-type"]) == (1, 100, "set")
    assert events["items"]["maxLength"] == 253
    assert spec["properties"]["description"]["maxLength"] == 256
    headers = spec["properties"]["headers"]
    assert headers["maxItems"] == 50
    assert headers["x-kubernetes-list-type"] == "map"
    assert headers["x-kubernetes-list-map-keys"] == ["name"]
    assert sorted(headers["items"]["properties"]) == ["name", "value", "valueFrom"]


def test_webhook_defaults_enabled_signing_key_and_every_retry_field(webhook_crd: Node) -> None:
    spec = node_at(root_schema(webhook_crd), "spec")
    assert spec["properties"]["enabled"]["default"] is True
    assert spec["properties"]["signingKeySecretRef"]["properties"]["key"]["default"] == "signingKey"
    retry = spec["properties"]["retry"]
    # default {} lets the inner defaults apply when retry is omitted altogether.
    assert retry["default"] == {}
    bounds = {
        name: (field["type"], field["default"], field["minimum"], field["maximum"])
        for name, field in retry["properties"].items()
    }
    assert bounds == {
        "maxRetries": ("integer", 3, 0, 10),
        "backoffSeconds": ("number", 1, 0, 3600),
        "maxBackoffSeconds": ("number", 60, 1, 86400),
        "timeoutSeconds": ("integer", 10, 1, 60),
    }


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("User.Created", True),
        ("User.Data.Updated", True),
        ("Organization.*", True),
        ("*", True),
        ("A1.b2", True),
        ("User.", False),
        (".User", False),
        ("1User", False),
        ("User..Created", False),
        ("User.**", False),
        ("User*", False),
        ("*.Created", False),
        ("User-Created", False),
        ("User.Created ", False),
        ("", False),
    ],
)
def test_webhook_event_entry_pattern_accepts_names_prefix_wildcards_and_star(
    webhook_crd: Node, name: str, accepted: bool
) -> None:
    (rule,) = rules_at(root_schema(webhook_crd), "spec.events[]")
    assert bool(regex_in(rule).fullmatch(name)) is accepted


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("User.Created", True), ("Order2.Paid", True), ("User.*", False), ("*", False), ("User.", False)],
)
def test_webhookevent_event_pattern_accepts_only_plain_names(event_crd: Node, name: str, accepted: bool) -> None:
    (rule,) = rules_at(root_schema(event_crd), "spec.event")
    assert bool(regex_in(rule).fullmatch(name)) is accepted


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("X-Team", True), ("Authorization", True), ("x_custom.id~1", True), ("X Team", False), ("X:Team", False)],
)
def test_header_name_pattern_accepts_only_http_tokens(webhook_crd: Node, name: str, accepted: bool) -> None:
    token_rule = rules_at(root_schema(webhook_crd), "spec.headers[].name")[0]
    assert bool(regex_in(token_rule).fullmatch(name)) is accepted


@pytest.mark.parametrize(
    ("url", "has_user_info"),
    [
        ("https://user:pw@hooks.example.com/x", True),
        ("https://token@hooks.example.com", True),
        ("https://hooks.example.com/path?mail=a@b.c", False),
        ("https://hooks.example.com/a@b", False),
        ("https://hooks.example.com#x@y", False),
    ],
)
def test_user_info_pattern_looks_only_at_the_authority(webhook_crd: Node, url: str, has_user_info: bool) -> None:
    (user_info_rule,) = [r for r in rules_at(root_schema(webhook_crd), "spec.url") if "@" in r]
    assert bool(regex_in(user_info_rule).search(url)) is has_user_info


def test_reserved_header_names_are_all_listed_lowercase(webhook_crd: Node) -> None:
    reserved_rule = rules_at(root_schema(webhook_crd), "spec.headers[].name")[1]
    listed = set(re.findall(r"'([a-z0-9-]+)'", reserved_rule))
    assert "lowerAscii()" in reserved_rule
    assert listed == {
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "logto-signature-sha-256",
    }


def test_webhook_status_holds_conditions_health_last_test_key_rotation_and_auto_disable(webhook_crd: Node) -> None:
    status = node_at(root_schema(webhook_crd), "status")
    assert sorted(status["properties"]) == [
        "autoDisable",
        "conditions",
        "health",
        "keyRotation",
        "lastTest",
        "observedGeneration",
        "signingKeySecretName",
    ]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    health = status["properties"]["health"]["properties"]
    assert health["state"]["enum"] == ["Healthy", "Warning", "Critical", "Unknown"]
    assert health["buckets"]["maxItems"] == 200
    assert sorted(health) == [
        "buckets",
        "failed",
        "lastDeliveryTime",
        "lastStatusCode",
        "requests",
        "state",
        "succeeded",
        "successRate",
        "window",
    ]
    results = node_at(status, "lastTest.results[]")
    assert sorted(results["properties"]) == ["durationMs", "error", "event", "statusCode"]
    assert sorted(node_at(status, "keyRotation")["properties"]) == [
        "message",
        "previousKeyExpiresAt",
        "requestedAt",
        "rotatedAt",
    ]


def test_webhookevent_spec_is_immutable_and_data_takes_any_json(event_crd: Node) -> None:
    schema = root_schema(event_crd)
    spec = node_at(schema, "spec")
    assert spec["required"] == ["event"]
    assert [r["rule"] for r in spec["x-kubernetes-validations"]] == ["self == oldSelf"]
    data = spec["properties"]["data"]
    assert "type" not in data
    assert data["x-kubernetes-preserve-unknown-fields"] is True
    assert data["nullable"] is True


def test_webhookevent_status_lists_one_delivery_per_webhook(event_crd: Node) -> None:
    status = node_at(root_schema(event_crd), "status")
    assert status["properties"]["phase"]["enum"] == [
        "Pending",
        "Delivering",
        "Delivered",
        "PartiallyFailed",
        "Failed",
        "NoSubscribers",
    ]
    deliveries = status["properties"]["deliveries"]
    # Atomic, written whole by the operator only: a map-type list (managedFields per entry and
    # field) doubled the API server's cost of every status write.
    assert deliveries["x-kubernetes-list-type"] == "atomic"
    assert deliveries["items"]["required"] == ["webhook"]
    item = deliveries["items"]["properties"]
    assert item["outcome"]["enum"] == ["Pending", "Retrying", "Succeeded", "Failed"]
    assert item["responseBody"]["maxLength"] == 4096
    assert sorted(item) == [
        "attempts",
        "durationMs",
        "error",
        "firstAttemptTime",
        "id",
        "lastAttemptTime",
        "nextAttemptTime",
        "outcome",
        "rateLimitedMs",
        "responseBody",
        "statusCode",
        "webhook",
    ]
    assert sorted(node_at(status, "redelivery")["properties"]) == ["requestedAt", "startedAt"]
