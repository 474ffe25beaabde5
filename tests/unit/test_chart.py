"""The Helm chart: lint, rendering with default and non-default values, schema rejections, CRD copies."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import binaries
from webhook_operator.settings import Settings, add_run_arguments, settings_from_args

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "webhook-operator"
RELEASE = "wo"
NAMESPACE = "webhook-system"
FULLNAME = "wo-webhook-operator"
# Render for the Kubernetes release the suite's control plane runs, not helm's built-in default.
TEMPLATE = ("template", RELEASE, str(CHART), "--kube-version", binaries.KUBERNETES_VERSION)

# The rules on namespaced resources, as templates/rbac.yaml grants them (see README.md, "RBAC").
NAMESPACED_RULES = [
    {"apiGroups": ["webhook-operator.io"], "resources": ["webhooks"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["webhook-operator.io"], "resources": ["webhooks/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["webhook-operator.io"], "resources": ["webhooks/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["webhook-operator.io"], "resources": ["webhookevents"], "verbs": ["get", "list", "watch", "delete"]},
    {"apiGroups": ["webhook-operator.io"], "resources": ["webhookevents/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]
# kopf's reads outside the served namespaces: CRDs always, namespace names only with --namespace.
CRD_RULES = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    }
]
NAMESPACE_RULES = [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]
LEASE_RULES = [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]
LEASE_ROLE = f"{FULLNAME}-leader-election"


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return binaries.find("helm")
    except binaries.BinariesUnavailable as exc:
        pytest.skip(f"helm is not available and cannot be built here: {exc}")


def run_helm(
    helm: Path, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    extra: list[str] = []
    if values is not None:
        assert tmp is not None
        values_file = tmp / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        extra = ["--values", str(values_file)]
    return subprocess.run([str(helm), *args, *extra], capture_output=True, text=True, check=False, timeout=120)


def render(helm: Path, tmp: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    result = run_helm(helm, *TEMPLATE, "--namespace", NAMESPACE, values=values, tmp=tmp)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def args(docs: list[dict[str, Any]]) -> list[str]:
    return list(container(docs)["args"])


@pytest.fixture(scope="module")
def defaults(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(helm, tmp_path_factory.mktemp("defaults"))


def test_helm_lint_is_clean(helm: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == (
        "v2",
        "webhook-operator",
        "0.1.0",
        "0.1.0",
    )


def test_default_render_is_a_cluster_wide_install(defaults: list[dict[str, Any]]) -> None:
    assert kinds(defaults) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    assert only(defaults, "ClusterRole", FULLNAME)["rules"] == NAMESPACED_RULES
    assert only(defaults, "ClusterRole", f"{FULLNAME}-discovery")["rules"] == CRD_RULES
    for binding in (d for d in defaults if d["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]


def test_every_namespaced_object_lands_in_the_release_namespace(defaults: list[dict[str, Any]]) -> None:
    for doc in defaults:
        if not doc["kind"].startswith("Cluster"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_deployment_is_two_replicas_rolled_new_pod_first(defaults: list[dict[str, Any]]) -> None:
    spec = only(defaults, "Deployment")["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert "--shutdown-grace=20s" in args(defaults), "the grace must fit inside terminationGracePeriodSeconds"


def test_leader_election_has_a_role_for_leases_in_the_release_namespace_only(defaults: list[dict[str, Any]]) -> None:
    role = only(defaults, "Role", LEASE_ROLE)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == LEASE_RULES
    binding = only(defaults, "RoleBinding", LEASE_ROLE)
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container(defaults)["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"


def test_without_leader_election_one_replica_is_recreated_and_no_lease_role_exists(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"leaderElection": {"enabled": False}, "replicaCount": 1})
    spec = only(docs, "Deployment")["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})
    assert "--no-leader-election" in args(docs)
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    assert operator_settings(args(docs)).leader_election is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"shutdownGraceSeconds": 30}, "terminationGracePeriodSeconds must exceed shutdownGraceSeconds"),
        ({"terminationGracePeriodSeconds": 10}, "terminationGracePeriodSeconds must exceed shutdownGraceSeconds"),
        ({"leaderElection": {"enabled": False}}, "replicaCount above 1 needs leaderElection.enabled"),
    ],
)
def test_unsafe_combinations_are_refused(helm: Path, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    result = run_helm(helm, *TEMPLATE, values=values, tmp=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_default_flags_follow_the_values(defaults: list[dict[str, Any]]) -> None:
    assert args(defaults) == [
        "--metrics-port=8080",
        "--health-port=8081",
        "--event-ttl=15m",
        "--failed-event-ttl=24h",
        "--max-completed-events=1000",
        "--key-rotation-overlap=24h",
        "--auto-disable-after=120h",
        "--max-concurrency=100",
        "--per-webhook-concurrency=10",
        "--log-format=json",
        "--log-level=INFO",
        "--leader-election-id=webhook-operator",
        "--shutdown-grace=20s",
    ]
    assert "command" not in container(defaults), "the image's entrypoint `webhook-operator run` must stay"


def test_image_defaults_to_the_app_version(defaults: list[dict[str, Any]]) -> None:
    assert container(defaults)["image"] == "ghcr.io/webhook-operator/webhook-operator:0.1.0"
    assert container(defaults)["imagePullPolicy"] == "IfNotPresent"


def test_pod_is_hardened(defaults: list[dict[str, Any]]) -> None:
    pod = only(defaults, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(defaults)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container(defaults)["resources"]
    assert set(resources) == {"requests", "limits"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(defaults)["volumeMounts"]


def test_startup_and_liveness_probe_healthz_readiness_probes_readyz(defaults: list[dict[str, Any]]) -> None:
    c = container(defaults)
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_metrics_service_exposes_port_8080_named_metrics(defaults: list[dict[str, Any]]) -> None:
    service = only(defaults, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = only(defaults, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_watch_namespaces_grant_roles_only_in_those_namespaces(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"watchNamespaces": ["shop", "billing"]})
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] != LEASE_ROLE]
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] != LEASE_ROLE]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["billing", "shop"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["billing", "shop"]
    for role in roles:
        assert role["rules"] == NAMESPACED_RULES
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    # Only kopf's discovery reads stay cluster-wide.
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert [r["metadata"]["name"] for r in cluster_roles] == [f"{FULLNAME}-discovery"]
    assert cluster_roles[0]["rules"] == CRD_RULES + NAMESPACE_RULES
    assert [a for a in args(docs) if a.startswith("--namespace")] == ["--namespace=shop", "--namespace=billing"]


def test_rbac_can_be_left_to_the_cluster_admin(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}]


def test_allow_cidrs_become_repeated_flags_and_allow_http_a_switch(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"allowCidrs": ["10.20.0.0/16", "fd00::/8"], "allowHttp": True})
    flags = args(docs)
    assert [a for a in flags if a.startswith("--allow-cidr")] == ["--allow-cidr=10.20.0.0/16", "--allow-cidr=fd00::/8"]
    assert "--allow-http" in flags


def test_tuning_values_become_flags(helm: Path, tmp_path: Path) -> None:
    values = {
        "eventTTL": "0",
        "failedEventTTL": "7d",
        "maxCompletedEvents": 0,
        "keyRotationOverlap": "1h30m",
        "autoDisableAfter": "0",
        "maxConcurrency": 7,
        "perWebhookConcurrency": 2,
        "logFormat": "text",
        "logLevel": "debug",
        "metricsPort": 9090,
        "healthPort": 9091,
        "extraArgs": ["--some-new-flag"],
    }
    docs = render(helm, tmp_path, values)
    assert args(docs) == [
        "--metrics-port=9090",
        "--health-port=9091",
        "--event-ttl=0",
        "--failed-event-ttl=7d",
        "--max-completed-events=0",
        "--key-rotation-overlap=1h30m",
        "--auto-disable-after=0",
        "--max-concurrency=7",
        "--per-webhook-concurrency=2",
        "--log-format=text",
        "--log-level=DEBUG",
        "--leader-election-id=webhook-operator",
        "--shutdown-grace=20s",
        "--some-new-flag",
    ]
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"metrics": 9090, "health": 9091}


def operator_settings(flags: list[str]) -> Settings:
    """What `webhook-operator run` makes of the rendered flags: the chart and the CLI must agree."""
    parser = argparse.ArgumentParser(prog="webhook-operator run", exit_on_error=False)
    add_run_arguments(parser)
    return settings_from_args(parser.parse_args(flags))


def test_operator_accepts_the_default_flags(defaults: list[dict[str, Any]]) -> None:
    settings = operator_settings(args(defaults))
    assert settings.namespaces == ()
    assert (settings.metrics_port, settings.health_port) == (8080, 8081)
    assert (settings.event_ttl_s, settings.failed_event_ttl_s, settings.max_completed_events) == (900, 86400, 1000)
    assert settings.key_rotation_overlap_s == 24 * 3600
    assert (settings.log_format, settings.log_level) == ("json", "INFO")
    assert settings.allow_http is False
    assert settings.leader_election is True and settings.leader_election_id == "webhook-operator"
    assert settings.shutdown_grace_s == 20


def test_operator_accepts_every_non_default_flag(helm: Path, tmp_path: Path) -> None:
    values = {
        "watchNamespaces": ["shop", "billing"],
        "eventTTL": "0",
        "failedEventTTL": "1h",
        "maxCompletedEvents": 50,
        "keyRotationOverlap": "1h30m",
        "allowHttp": True,
        "allowCidrs": ["10.20.0.0/16"],
        "caBundle": {"secret": {"name": "corp-ca"}},
        "maxConcurrency": 7,
        "perWebhookConcurrency": 2,
        "logFormat": "text",
        "logLevel": "warning",
        "leaderElection": {"leaseName": "hooks.lock"},
        "shutdownGraceSeconds": 5,
    }
    settings = operator_settings(args(render(helm, tmp_path, values)))
    assert settings.namespaces == ("shop", "billing")
    assert (settings.event_ttl_s, settings.failed_event_ttl_s, settings.max_completed_events) == (0, 3600, 50)
    assert settings.key_rotation_overlap_s == 5400
    assert settings.allow_http is True
    assert settings.ca_bundle == "/etc/webhook-operator/ca-bundle/ca-bundle.pem"
    assert (settings.max_concurrency, settings.per_webhook_concurrency) == (7, 2)
    assert (settings.log_format, settings.log_level) == ("text", "WARNING")
    assert (settings.leader_election_id, settings.shutdown_grace_s) == ("hooks.lock", 5)


@pytest.mark.parametrize("source", ["configMap", "secret"])
def test_ca_bundle_is_mounted_and_passed_as_a_flag(helm: Path, tmp_path: Path, source: str) -> None:
    docs = render(helm, tmp_path, {"caBundle": {source: {"name": "corp-ca", "key": "bundle.pem"}}})
    assert "--ca-bundle=/etc/webhook-operator/ca-bundle/ca-bundle.pem" in args(docs)
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["ca-bundle"] == {
        "name": "ca-bundle",
        "mountPath": "/etc/webhook-operator/ca-bundle",
        "readOnly": True,
    }
    volume = next(
        v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "ca-bundle"
    )
    if source == "configMap":
        assert volume["configMap"]["name"] == "corp-ca"
        assert volume["configMap"]["items"] == [{"key": "bundle.pem", "path": "ca-bundle.pem"}]
    else:
        assert volume["secret"]["secretName"] == "corp-ca"
        assert volume["secret"]["items"] == [{"key": "bundle.pem", "path": "ca-bundle.pem"}]


def test_ca_bundle_from_both_sources_is_refused(helm: Path, tmp_path: Path) -> None:
    values = {"caBundle": {"configMap": {"name": "a"}, "secret": {"name": "b"}}}
    result = run_helm(helm, *TEMPLATE, values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "either caBundle.configMap.name or caBundle.secret.name" in result.stderr


def test_scheduling_values_reach_the_pod(helm: Path, tmp_path: Path) -> None:
    values = {
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "podAnnotations": {"example.com/team": "platform"},
        "image": {"repository": "registry.example.com/wo", "tag": "dev", "pullPolicy": "Always"},
    }
    docs = render(helm, tmp_path, values)
    template = only(docs, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"] == {"example.com/team": "platform"}
    pod = template["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert container(docs)["image"] == "registry.example.com/wo:dev"
    assert container(docs)["imagePullPolicy"] == "Always"


def test_optional_objects_are_off_by_default(defaults: list[dict[str, Any]]) -> None:
    present = set(kinds(defaults))
    assert not present & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap"}


def test_service_monitor_scrapes_the_metrics_port(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}}})
    monitor = only(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= only(docs, "Service")["metadata"]["labels"].items()


def test_prometheus_rule_embeds_the_alert_groups_unchanged(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"metrics": {"prometheusRule": {"enabled": True}}})
    rule = only(docs, "PrometheusRule")
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert rule["spec"]["groups"], "the alert file has no groups"


def test_grafana_dashboard_configmap_carries_the_dashboard_and_sidecar_label(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}})
    configmap = only(docs, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    shipped = (CHART / "dashboards" / "webhook-operator.json").read_text()
    assert json.loads(configmap["data"]["webhook-operator.json"]) == json.loads(shipped)


def test_network_policy_admits_only_metrics_and_health_and_reaches_dns_webhooks_and_api(
    helm: Path, tmp_path: Path
) -> None:
    extra_egress = {"ports": [{"port": 8443, "protocol": "TCP"}]}
    values = {"networkPolicy": {"enabled": True, "extraEgress": [extra_egress]}}
    policy = only(render(helm, tmp_path, values), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = [port["port"] for rule in policy["ingress"] for port in rule["ports"]]
    assert ingress_ports == ["metrics", "health"]
    egress_ports = [(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]]
    assert egress_ports == [
        (53, "UDP"),
        (53, "TCP"),
        (443, "TCP"),
        (80, "TCP"),
        (443, "TCP"),
        (6443, "TCP"),
        (8443, "TCP"),
    ]


def test_network_policy_peers_can_be_narrowed(helm: Path, tmp_path: Path) -> None:
    scraper = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    api = {"ipBlock": {"cidr": "172.18.0.2/32"}}
    values = {"networkPolicy": {"enabled": True, "metricsFrom": [scraper], "apiServer": {"to": [api]}}}
    policy = only(render(helm, tmp_path, values), "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == [scraper]
    assert policy["egress"][2]["to"] == [api]


def test_pod_disruption_budget_evicts_one_pod_at_a_time_and_never_blocks_drains(helm: Path, tmp_path: Path) -> None:
    pdb = only(render(helm, tmp_path, {"podDisruptionBudget": {"enabled": True}}), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicaCount": -1}, "replicaCount"),
        ({"leaderElection": {"leaseName": "Webhook_Operator"}}, "leaseName"),
        ({"shutdownGraceSeconds": "20s"}, "shutdownGraceSeconds"),
        ({"replicasCount": 1}, "replicasCount"),
        ({"eventTTL": 5}, "eventTTL"),
        ({"eventTTL": "a day"}, "eventTTL"),
        ({"failedEventTTL": "a week"}, "failedEventTTL"),
        ({"maxCompletedEvents": -1}, "maxCompletedEvents"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"allowCidrs": "10.0.0.0/8"}, "allowCidrs"),
        ({"watchNamespaces": ["Shop"]}, "watchNamespaces"),
        ({"image": {"repository": "x", "tags": "1"}}, "tags"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(
    helm: Path, tmp_path: Path, values: dict[str, Any], expected: str
) -> None:
    result = run_helm(helm, *TEMPLATE, values=values, tmp=tmp_path)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert expected in result.stderr


def test_schema_error_texts_say_what_is_wrong(helm: Path, tmp_path: Path) -> None:
    # Helm 3.18+ words them as below; older releases said "Invalid type. Expected: string".
    cases: list[tuple[dict[str, Any], str]] = [
        ({"eventTTL": 5}, r"eventTTL'?:? (got number, want string|Invalid type\. Expected: string)"),
        ({"replicaCount": "two"}, r"replicaCount'?:? (got string, want integer|Invalid type\. Expected: integer)"),
        ({"replicaCount": -1}, r"replicaCount'?:? (minimum: got -1, want 0|Must be greater than or equal to 0)"),
        ({"replicasCount": 1}, r"[Aa]dditional propert(y|ies) '?replicasCount'? (is )?not allowed"),
    ]
    for values, pattern in cases:
        result = run_helm(helm, *TEMPLATE, values=values, tmp=tmp_path)
        assert re.search(pattern, result.stderr), result.stderr


def test_chart_crds_are_byte_identical_to_the_repo_crds() -> None:
    repo_crds = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    chart_crds = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert repo_crds, "crds/ is empty"
    assert chart_crds.keys() == repo_crds.keys(), "run scripts/sync-chart-crds.sh"
    for name, content in repo_crds.items():
        assert chart_crds[name] == content, (
            f"charts/webhook-operator/crds/{name} is stale: run scripts/sync-chart-crds.sh"
        )


def test_sync_script_check_mode_agrees() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "sync-chart-crds.sh"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


FREE_FORM = {"resources", "podSecurityContext", "securityContext"}


def value_keys() -> Iterator[tuple[int, str, list[str]]]:
    """(line index, key, dotted path) of every key in values.yaml outside free-form Kubernetes blocks."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent]
        if not any(k in FREE_FORM for _, k in stack):
            yield index, match.group(2), [k for _, k in stack] + [match.group(2)]
        stack.append((indent, match.group(2)))


def test_every_value_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    uncommented = [".".join(path) for index, _, path in value_keys() if not lines[index - 1].lstrip().startswith("#")]
    assert uncommented == []


def test_every_value_is_in_the_install_docs_table() -> None:
    docs = (REPO / "README.md").read_text()
    paths = [".".join(path) for _, _, path in value_keys()]
    leaves = [p for p in paths if not any(other.startswith(p + ".") for other in paths)]
    missing = [leaf for leaf in leaves if f"`{leaf}`" not in docs]
    assert missing == []


def test_gitops_example_values_pass_the_chart_schema(helm: Path, tmp_path: Path) -> None:
    argocd = yaml.safe_load((REPO / "examples" / "argocd" / "webhook-operator.yaml").read_text())
    flux = yaml.safe_load((REPO / "examples" / "flux" / "operator" / "helmrelease.yaml").read_text())
    assert argocd["spec"]["source"]["path"] == "charts/webhook-operator"
    assert argocd["spec"]["source"]["repoURL"] == "https://github.com/webhook-operator/webhook-operator"
    assert flux["spec"]["chart"]["spec"]["chart"] == "./charts/webhook-operator"
    for values in (argocd["spec"]["source"]["helm"]["valuesObject"], flux["spec"]["values"]):
        assert only(render(helm, tmp_path, values), "Deployment")


def test_argocd_webhooks_sync_after_the_operator() -> None:
    def wave(name: str) -> int:
        app = yaml.safe_load((REPO / "examples" / "argocd" / name).read_text())
        return int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])

    assert wave("webhook-operator.yaml") < wave("webhooks.yaml")


def flux_objects() -> dict[str, dict[str, Any]]:
    folder = REPO / "examples" / "flux"
    docs = [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml")) if p.name != "kustomization.yaml"]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Kustomization"}


def test_flux_webhooks_depend_on_the_operator_and_check_webhook_health() -> None:
    kustomizations = flux_objects()
    operator, webhooks = kustomizations["webhook-operator"], kustomizations["webhook-operator-examples"]
    assert operator["spec"]["wait"] is True
    assert webhooks["spec"]["dependsOn"] == [{"name": "webhook-operator"}]
    assert webhooks["spec"]["path"] == "./examples/webhooks"
    checks = webhooks["spec"]["healthChecks"]
    assert checks and all(c["kind"] == "Webhook" for c in checks)


def test_flux_health_checks_name_webhooks_that_the_examples_define() -> None:
    examples = REPO / "examples" / "webhooks"
    defined = {
        (doc["metadata"].get("namespace"), doc["metadata"]["name"])
        for path in sorted(examples.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "Webhook"
    }
    checks = flux_objects()["webhook-operator-examples"]["spec"]["healthChecks"]
    missing = [(c.get("namespace"), c["name"]) for c in checks if (c.get("namespace"), c["name"]) not in defined]
    assert missing == [], f"examples/webhooks defines {sorted(defined)}"


INGRESS = {"ingress": {"enabled": True, "tls": {"secretName": "ingress-tls"}, "maxBodyBytes": 32768}}
INGRESS_REVIEW_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
]
CREATE_EVENTS_RULE = {"apiGroups": ["webhook-operator.io"], "resources": ["webhookevents"], "verbs": ["create"]}


def test_ingress_is_off_by_default(defaults: list[dict[str, Any]]) -> None:
    assert not [a for a in args(defaults) if a.startswith("--ingress")]
    assert [d["metadata"]["name"] for d in defaults if d["kind"] == "Service"] == [f"{FULLNAME}-metrics"]
    assert CREATE_EVENTS_RULE not in only(defaults, "ClusterRole", FULLNAME)["rules"]


def test_ingress_serves_the_tls_secret_on_its_port_behind_a_service(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, INGRESS)
    settings = operator_settings(args(docs))
    assert (settings.ingress_port, settings.ingress_max_body_bytes) == (8443, 32768)
    assert settings.ingress_tls_cert == "/etc/webhook-operator/ingress-tls/tls.crt"
    assert settings.ingress_tls_key == "/etc/webhook-operator/ingress-tls/tls.key"
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    # A directory mount without subPath: a renewed Secret reaches the running pod.
    assert mounts["ingress-tls"] == {
        "name": "ingress-tls",
        "mountPath": "/etc/webhook-operator/ingress-tls",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ingress-tls"]["secret"]["secretName"] == "ingress-tls"
    assert {p["name"]: p["containerPort"] for p in container(docs)["ports"]}["ingress"] == 8443
    service = only(docs, "Service", f"{FULLNAME}-ingress")
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "ingress", "protocol": "TCP"}]
    assert (
        service["spec"]["selector"].items()
        <= only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_ingress_rbac_reviews_cluster_wide_and_creates_events_where_the_operator_serves(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, tmp_path, INGRESS)
    assert only(docs, "ClusterRole", f"{FULLNAME}-ingress")["rules"] == INGRESS_REVIEW_RULES
    binding = only(docs, "ClusterRoleBinding", f"{FULLNAME}-ingress")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert only(docs, "ClusterRole", FULLNAME)["rules"] == [
        *NAMESPACED_RULES[:4],
        CREATE_EVENTS_RULE,
        *NAMESPACED_RULES[4:],
    ]
    namespaced = render(helm, tmp_path, {**INGRESS, "watchNamespaces": ["shop"]})
    served = [d for d in namespaced if d["kind"] == "Role" and d["metadata"]["namespace"] == "shop"]
    assert len(served) == 1 and CREATE_EVENTS_RULE in served[0]["rules"]
    assert only(namespaced, "ClusterRole", f"{FULLNAME}-ingress")["rules"] == INGRESS_REVIEW_RULES


def test_network_policy_admits_the_ingress_port_from_the_given_peers(helm: Path, tmp_path: Path) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"team": "shop"}}}
    values = {**INGRESS, "networkPolicy": {"enabled": True, "ingressFrom": [peer]}}
    policy = only(render(helm, tmp_path, values), "NetworkPolicy")["spec"]
    rule = [r for r in policy["ingress"] if r["ports"] == [{"port": "ingress", "protocol": "TCP"}]]
    assert rule == [{"ports": [{"port": "ingress", "protocol": "TCP"}], "from": [peer]}]


def test_ingress_without_a_tls_secret_is_refused_naming_the_key(helm: Path, tmp_path: Path) -> None:
    result = run_helm(helm, *TEMPLATE, values={"ingress": {"enabled": True}}, tmp=tmp_path)
    assert result.returncode != 0
    assert "secretName" in result.stderr


# -- bus mode ------------------------------------------------------------------------------------
BUS = {
    "replicaCount": 3,
    "eventBus": {
        "servers": ["nats://nats-0.nats:4222", "nats://nats-1.nats:4222"],
        "auth": {"secretName": "nats-creds", "credsKey": "operator.creds"},
        "tls": {"secretName": "nats-tls", "clientCertificate": True},
        "streamReplicas": 3,
        "requestLog": {"maxAge": "12h", "maxBytes": 2147483648, "maxPerWebhook": 500},
    },
}


def test_event_bus_is_off_by_default(defaults: list[dict[str, Any]]) -> None:
    assert not [a for a in args(defaults) if a.startswith("--event-bus")]
    assert operator_settings(args(defaults)).event_bus is None


def test_event_bus_values_become_flags_and_read_only_secret_mounts(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, BUS)
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    bus = operator_settings(args(docs)).event_bus
    assert bus is not None
    assert bus.servers == ("nats://nats-0.nats:4222", "nats://nats-1.nats:4222")
    assert bus.creds_file == "/etc/webhook-operator/event-bus-auth/operator.creds"
    assert (bus.tls_ca, bus.tls_cert, bus.tls_key) == (
        "/etc/webhook-operator/event-bus-tls/ca.crt",
        "/etc/webhook-operator/event-bus-tls/tls.crt",
        "/etc/webhook-operator/event-bus-tls/tls.key",
    )
    assert (bus.replicas, bus.log_max_age_s, bus.log_max_bytes, bus.log_max_per_webhook) == (3, 43200, 2**31, 500)
    assert bus.dedupe_window_s == 900
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["event-bus-auth"]["readOnly"] and mounts["event-bus-tls"]["readOnly"]
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["event-bus-auth"]["secret"]["secretName"] == "nats-creds"
    assert volumes["event-bus-tls"]["secret"]["secretName"] == "nats-tls"


def test_event_bus_user_and_password_from_the_secret(helm: Path, tmp_path: Path) -> None:
    values = {
        "eventBus": {"servers": ["nats://n:4222"], "auth": {"secretName": "s", "user": "op", "passwordKey": "pw"}}
    }
    bus = operator_settings(args(render(helm, tmp_path, values))).event_bus
    assert bus is not None
    assert (bus.user, bus.password_file) == ("op", "/etc/webhook-operator/event-bus-auth/pw")
    assert bus.tls_ca is None


def test_event_bus_key_without_its_secret_is_refused(helm: Path, tmp_path: Path) -> None:
    values = {"eventBus": {"servers": ["nats://n:4222"], "auth": {"credsKey": "x.creds"}}}
    result = run_helm(helm, *TEMPLATE, "--namespace", NAMESPACE, values=values, tmp=tmp_path)
    assert result.returncode != 0 and "eventBus.auth keys need eventBus.auth.secretName" in result.stderr


def test_network_policy_reaches_nats_in_bus_mode(helm: Path, tmp_path: Path) -> None:
    values = {"networkPolicy": {"enabled": True}, "eventBus": {"servers": ["nats://n:4222"]}}
    egress = only(render(helm, tmp_path, values), "NetworkPolicy")["spec"]["egress"]
    assert {"ports": [{"port": 4222, "protocol": "TCP"}]} in egress
    cr_mode = only(render(helm, tmp_path, {"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]["egress"]
    assert {"ports": [{"port": 4222, "protocol": "TCP"}]} not in cr_mode
