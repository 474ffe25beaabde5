"""Helpers for tests on a real API server: manifests, reads, waits on conditions and phases, metrics."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook as StandardWebhook

from tests.support.receiver import Received

KubectlFn = Callable[..., subprocess.CompletedProcess[str]]
Manifest = dict[str, Any]
T = TypeVar("T")

API_VERSION = "webhook-operator.io/v1alpha1"
FINAL_PHASES = frozenset({"Delivered", "PartiallyFailed", "Failed", "NoSubscribers"})
# Short backoffs keep retry tests fast; the schema defaults are tested elsewhere.
FAST_RETRY = {"maxRetries": 3, "backoffSeconds": 0.1, "maxBackoffSeconds": 1, "timeoutSeconds": 5}


# -- manifests --------------------------------------------------------------------------
def webhook_manifest(name: str, url: str, events: list[str] | None = None, **spec: Any) -> Manifest:
    """A Webhook with fast retries unless ``retry`` is given; other spec fields as keyword arguments."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {"url": url, "events": events or ["User.Created"], "retry": dict(FAST_RETRY), **spec},
    }


def event_manifest(event: str, data: Any = None, *, name: str | None = None) -> Manifest:
    meta: dict[str, Any] = {"name": name} if name else {"generateName": event.lower().replace(".", "-") + "-"}
    spec: dict[str, Any] = {"event": event}
    if data is not None:
        spec["data"] = data
    return {"apiVersion": API_VERSION, "kind": "WebhookEvent", "metadata": meta, "spec": spec}


def secret_manifest(name: str, data: Mapping[str, str], labels: Mapping[str, str] | None = None) -> Manifest:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


# -- API calls --------------------------------------------------------------------------
def apply(kubectl: KubectlFn, namespace: str, manifest: Manifest) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def create(kubectl: KubectlFn, namespace: str, manifest: Manifest) -> str:
    """Create an object (``generateName`` allowed) and return its name."""
    result = kubectl(
        "create", "-n", namespace, "-o", "jsonpath={.metadata.name}", "-f", "-", input=json.dumps(manifest)
    )
    return result.stdout.strip()


def get(kubectl: KubectlFn, namespace: str, resource: str) -> Manifest:
    """``resource`` like ``webhook/billing`` or ``secret/billing-signing-key``; fails if absent."""
    return dict(json.loads(kubectl("get", "-n", namespace, resource, "-o", "json").stdout))


def get_or_none(kubectl: KubectlFn, namespace: str, resource: str) -> Manifest | None:
    result = kubectl("get", "-n", namespace, resource, "-o", "json", "--ignore-not-found", check=False)
    if result.returncode != 0:
        raise AssertionError(f"kubectl get {resource} failed:\n{result.stderr}")
    return dict(json.loads(result.stdout)) if result.stdout.strip() else None


def merge_patch(kubectl: KubectlFn, namespace: str, resource: str, patch: Mapping[str, Any]) -> None:
    kubectl("patch", "-n", namespace, resource, "--type=merge", "-p", json.dumps(patch))


def annotate(kubectl: KubectlFn, namespace: str, resource: str, key: str, value: str) -> None:
    kubectl("annotate", "-n", namespace, resource, f"{key}={value}", "--overwrite")


def delete(kubectl: KubectlFn, namespace: str, resource: str, *, wait: bool = True) -> None:
    kubectl("delete", "-n", namespace, resource, f"--wait={'true' if wait else 'false'}")


def secret_data(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data, decoded."""
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


# -- waiting ----------------------------------------------------------------------------
def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy; fail with ``what`` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def wait_for_object(
    kubectl: KubectlFn,
    namespace: str,
    resource: str,
    predicate: Callable[[Manifest], object],
    *,
    timeout: float = 30.0,
    what: str = "",
) -> Manifest:
    """The object once ``predicate`` holds for it."""

    def probe() -> Manifest | None:
        obj = get(kubectl, namespace, resource)
        return obj if predicate(obj) else None

    return wait_until(probe, timeout=timeout, what=what or f"{resource} to satisfy the predicate")


def condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or ():
        if item.get("type") == type_:
            return dict(item)
    return None


def wait_for_condition(
    kubectl: KubectlFn,
    namespace: str,
    resource: str,
    type_: str,
    status: str,
    *,
    reason: str | None = None,
    timeout: float = 30.0,
    current_generation: bool = True,
) -> Manifest:
    """The object once condition ``type_`` has ``status`` (and ``reason``), for its current generation."""

    def probe() -> Manifest | None:
        obj = get(kubectl, namespace, resource)
        cond = condition(obj, type_)
        if cond is None or cond.get("status") != status or (reason and cond.get("reason") != reason):
            return None
        if current_generation and cond.get("observedGeneration") != obj["metadata"].get("generation"):
            return None
        return obj

    return wait_until(probe, timeout=timeout, what=f"{resource} {type_}={status} {reason or ''}".strip())


def wait_ready(kubectl: KubectlFn, namespace: str, name: str, *, timeout: float = 30.0) -> Manifest:
    return wait_for_condition(kubectl, namespace, f"webhook/{name}", "Ready", "True", timeout=timeout)


def wait_event_final(kubectl: KubectlFn, namespace: str, name: str, *, timeout: float = 30.0) -> Manifest:
    """The WebhookEvent once its phase is final."""

    def probe() -> Manifest | None:
        obj = get(kubectl, namespace, f"webhookevent/{name}")
        return obj if (obj.get("status") or {}).get("phase") in FINAL_PHASES else None

    return wait_until(probe, timeout=timeout, what=f"webhookevent/{name} to reach a final phase")


def send_event(kubectl: KubectlFn, namespace: str, event: str, data: Any = None, *, timeout: float = 30.0) -> Manifest:
    """Create a WebhookEvent and return it in its final phase."""
    name = create(kubectl, namespace, event_manifest(event, data))
    return wait_event_final(kubectl, namespace, name, timeout=timeout)


# -- metrics ----------------------------------------------------------------------------
def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (full sample name, e.g. ``..._total``) in a Prometheus text exposition."""
    found: list[tuple[dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found.append((dict(sample.labels), float(sample.value)))
    return found


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``; None if there is none."""
    matches = [v for got, v in metric_samples(text, name) if all(got.get(k) == v2 for k, v2 in labels.items())]
    if len(matches) > 1:
        raise AssertionError(f"{len(matches)} samples of {name} match {labels}; narrow the labels")
    return matches[0] if matches else None


def series_with_labels(text: str, **labels: str) -> list[str]:
    """Names of all webhook_operator_ samples carrying these labels (to check a webhook's series are gone)."""
    names = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("webhook_operator_") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                names.append(sample.name)
    return names


# -- deliveries as a receiver checks them ---------------------------------------------------
def signing_keys(kubectl: KubectlFn, namespace: str, webhook: str) -> tuple[str, str]:
    """(signingKey, standardWebhooksSecret) from the Webhook's operator-managed Secret, read with kubectl."""
    data = secret_data(get(kubectl, namespace, f"secret/{webhook}-signing-key"))
    return data["signingKey"], data["standardWebhooksSecret"]


def verify_signatures(body: bytes, headers: Mapping[str, str], signing_key: str, standard_secret: str) -> None:
    """Verify one request the two ways receivers do: the standardwebhooks library and Logto's hex HMAC."""
    StandardWebhook(standard_secret).verify(body, dict(headers))
    expected = hmac.new(signing_key.encode("utf-8"), body, hashlib.sha256).hexdigest()
    got = headers.get("logto-signature-sha-256", "")
    assert hmac.compare_digest(got, expected), f"logto-signature-sha-256 {got!r} is not the HMAC of the body"


def verify_received(kubectl: KubectlFn, namespace: str, requests: Iterable[Received]) -> None:
    """Verify every request a receiver got; by the tests' convention Webhook ``<name>`` posts to ``/<name>``."""
    keys: dict[str, tuple[str, str]] = {}
    for request in requests:
        name = request.path.split("?")[0].strip("/")
        if name not in keys:
            keys[name] = signing_keys(kubectl, namespace, name)
        try:
            verify_signatures(request.body, request.headers, *keys[name])
        except Exception as exc:
            webhook_id = request.headers.get("webhook-id")
            raise AssertionError(f"request to {request.path} (webhook-id {webhook_id}) not verified: {exc}") from exc
