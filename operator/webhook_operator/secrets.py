"""Signing-key Secrets (create, adopt-check, rotate, expire the previous key) and header Secrets.

Key material is returned to callers and written to Secrets only: never logged, never in status.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook_operator import GROUP, VERSION
from webhook_operator.delivery.transport import TLSMaterial, TLSMaterialError, check_tls_material
from webhook_operator.kube import ApiError, KubeClient, resource_path, secret_path
from webhook_operator.model import (
    MANAGED_BY_LABEL,
    PREVIOUS_KEY,
    PREVIOUS_KEY_EXPIRES_ANNOTATION,
    SIGNING_KEY,
    STANDARD_SECRET_KEY,
    WebhookSpec,
    format_time,
    parse_time,
    signing_secret_name,
)
from webhook_operator.signing import generate_signing_key, standard_webhooks_secret

SecretKey = tuple[str, str]  # (namespace, name)


class ListedSecrets:
    """Secrets read once for many reconciles (start-up, a take-over): the signing-key Secrets from one
    list, and any other Secret (a header or TLS Secret that webhooks share) with one GET, however
    many reconciles ask for it at once."""

    def __init__(self, bodies: dict[SecretKey, dict[str, Any]]) -> None:
        self.bodies: dict[SecretKey, dict[str, Any] | None] = dict(bodies)
        self._reading: dict[SecretKey, asyncio.Future[dict[str, Any] | None]] = {}

    def __contains__(self, key: SecretKey) -> bool:
        return key in self.bodies

    def note(self, key: SecretKey, secret: Mapping[str, Any] | None) -> None:
        """A Secret as one of our writes left it: a webhook reconciled again meanwhile reads it here."""
        self.bodies[key] = None if secret is None else slim_secret(secret)

    async def read(self, kube: KubeClient, key: SecretKey) -> dict[str, Any] | None:
        if key in self.bodies:
            return self.bodies[key]
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(kube.get(secret_path(*key)))
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        secret = await asyncio.shield(reading)
        self.bodies[key] = None if secret is None else slim_secret(secret)
        return self.bodies[key]


class SecretReader:
    """The Secrets one reconcile reads: each at most once, from ``listed`` when given, else with a
    GET; remembers the resourceVersion it saw of each (None: missing), so that a watch event that
    changes nothing costs nothing."""

    def __init__(self, kube: KubeClient, listed: ListedSecrets | None = None) -> None:
        self.kube = kube
        self.listed = listed
        self.versions: dict[str, str | None] = {}
        self._read: dict[str, dict[str, Any] | None] = {}

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        if name in self._read:
            return self._read[name]
        if self.listed is not None:
            secret = await self.listed.read(self.kube, (namespace, name))
        else:
            secret = await self.kube.get(secret_path(namespace, name))
        self.note(name, secret)
        return secret

    def note(self, name: str, secret: Mapping[str, Any] | None, *, namespace: str | None = None) -> None:
        """What the Secret is now, after a read or (with its ``namespace``) one of our own writes."""
        if self.listed is not None and namespace is not None:
            self.listed.note((namespace, name), secret)
        self._read[name] = None if secret is None else dict(secret)
        self.versions[name] = None if secret is None else (secret.get("metadata") or {}).get("resourceVersion")


def slim_secret(secret: Mapping[str, Any]) -> dict[str, Any]:
    """What a reconcile reads of a Secret (no managedFields or other metadata): held for a whole load."""
    meta = secret.get("metadata") or {}
    kept = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences")
    return {
        "metadata": {k: meta[k] for k in kept if k in meta},
        "type": secret.get("type"),
        "data": secret.get("data") or {},
    }


async def list_signing_secrets(kube: KubeClient, namespaces: tuple[str, ...]) -> ListedSecrets:
    """The operator's signing-key Secrets (by label) in these namespaces (none: the cluster), page by page."""
    selector = f"{MANAGED_BY_LABEL[0]}={MANAGED_BY_LABEL[1]}"
    bodies: dict[SecretKey, dict[str, Any]] = {}
    for namespace in namespaces or (None,):
        path = resource_path("secrets", namespace, group="", version="v1")
        async for page in kube.list_pages(path, page_size=500, label_selector=selector):
            for secret in page:
                meta = secret.get("metadata") or {}
                bodies[(meta.get("namespace", ""), meta.get("name", ""))] = slim_secret(secret)
    return ListedSecrets(bodies)


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class SigningKeys:
    secret_name: str
    keys: tuple[str, ...] = ()
    previous_expires_at: dt.datetime | None = None
    problem: Problem | None = None
    deferred: bool = False  # a write was needed and not made (not the leader): the leader repeats this


def _decode(data: Mapping[str, Any] | None, key: str) -> str | None:
    raw = (data or {}).get(key)
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _encode(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def key_data(key: str) -> dict[str, str]:
    return {SIGNING_KEY: _encode(key), STANDARD_SECRET_KEY: _encode(standard_webhooks_secret(key))}


def owned_by(secret: Mapping[str, Any], uid: str) -> bool:
    refs = (secret.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def new_signing_secret(webhook: Mapping[str, Any]) -> dict[str, Any]:
    meta = webhook["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": signing_secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {MANAGED_BY_LABEL[0]: MANAGED_BY_LABEL[1], "webhook-operator.io/webhook": meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "Webhook",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": key_data(generate_signing_key()),
    }


async def ensure_signing_keys(
    kube: KubeClient | SecretReader,
    webhook: Mapping[str, Any],
    spec: WebhookSpec,
    now: dt.datetime,
    *,
    write: bool = True,
) -> SigningKeys:
    """The keys to sign with, creating or repairing the operator's Secret; a Problem if it cannot.

    With ``write=False`` (a standby) nothing is written: what would need a write is ``deferred``.
    """
    reader = kube if isinstance(kube, SecretReader) else SecretReader(kube)
    kube = reader.kube
    meta = webhook["metadata"]
    namespace = meta["namespace"]
    if spec.signing_key_ref is not None:
        ref = spec.signing_key_ref
        secret = await reader.get(namespace, ref.name)
        if secret is None:
            return SigningKeys(
                ref.name,
                problem=Problem(
                    "SigningKeySecretMissing",
                    f"spec.signingKeySecretRef: Secret {namespace}/{ref.name} does not exist; create it with the key "
                    f"under {ref.key!r}, or remove signingKeySecretRef to let the operator generate a key.",
                ),
            )
        key = _decode(secret.get("data"), ref.key)
        if not key:
            return SigningKeys(
                ref.name,
                problem=Problem(
                    "SigningKeySecretMissing",
                    f"spec.signingKeySecretRef: Secret {namespace}/{ref.name} has no key {ref.key!r}; "
                    "add it or fix the key name.",
                ),
            )
        return SigningKeys(ref.name, keys=(key,))

    name = signing_secret_name(meta["name"])
    path = secret_path(namespace, name)
    if reader.listed is not None and (namespace, name) not in reader.listed:
        # Not among the listed signing-key Secrets: created below (a 409 reads what is there); a
        # standby leaves that to the leader.
        secret = None
    else:
        secret = await reader.get(namespace, name)
    if secret is None and not write:
        return SigningKeys(name, deferred=True)
    if secret is None:
        try:
            secret = await kube.create(secret_path(namespace), new_signing_secret(webhook))
        except ApiError as exc:
            if exc.status != 409:
                raise
            secret = await kube.get(path)  # created concurrently: judge what is there now
            if secret is None:
                raise
        reader.note(name, secret, namespace=namespace)
    if not owned_by(secret, meta["uid"]):
        return SigningKeys(
            name,
            problem=Problem(
                "SigningKeySecretConflict",
                f"Secret {namespace}/{name} exists and is not owned by this Webhook, so the operator will not "
                f"overwrite it. Delete or rename that Secret, or point spec.signingKeySecretRef at it to use its key.",
            ),
        )
    data = secret.get("data") or {}
    current = _decode(data, SIGNING_KEY)
    if (not current or len(current) < 16) and not write:
        return SigningKeys(name, deferred=True)
    if not current or len(current) < 16:
        current = generate_signing_key()
        reader.note(name, await kube.merge_patch(path, {"data": key_data(current)}), namespace=namespace)
    keys = [current]
    deferred = False
    previous = _decode(data, PREVIOUS_KEY)
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    expires = parse_time(annotations.get(PREVIOUS_KEY_EXPIRES_ANNOTATION))
    if previous:
        if expires is not None and expires > now:
            keys.append(previous)
        elif not write:
            deferred = True
        else:
            patched = await kube.merge_patch(
                path,
                {"metadata": {"annotations": {PREVIOUS_KEY_EXPIRES_ANNOTATION: None}}, "data": {PREVIOUS_KEY: None}},
            )
            reader.note(name, patched, namespace=namespace)
            expires = None
    return SigningKeys(
        name, keys=tuple(keys), previous_expires_at=expires if previous and not deferred else None, deferred=deferred
    )


async def rotate_signing_key(
    kube: KubeClient, webhook: Mapping[str, Any], overlap_s: float, now: dt.datetime
) -> dt.datetime:
    """Put a new key in place and keep the current one as the previous key until the returned time."""
    meta = webhook["metadata"]
    path = secret_path(meta["namespace"], signing_secret_name(meta["name"]))
    secret = await kube.get(path)
    if secret is None or not owned_by(secret, meta["uid"]):
        raise ApiError(409, "Conflict", "the signing-key Secret is missing or not owned by this Webhook")
    current = _decode(secret.get("data"), SIGNING_KEY)
    expires = now + dt.timedelta(seconds=overlap_s)
    patch: dict[str, Any] = {"data": key_data(generate_signing_key())}
    if current and overlap_s > 0:
        patch["data"][PREVIOUS_KEY] = _encode(current)
        patch["metadata"] = {"annotations": {PREVIOUS_KEY_EXPIRES_ANNOTATION: format_time(expires)}}
    # Guard against a concurrent writer with the resourceVersion we read.
    patch.setdefault("metadata", {})["resourceVersion"] = secret["metadata"]["resourceVersion"]
    await kube.merge_patch(path, patch)
    return expires


async def resolve_headers(
    kube: KubeClient | SecretReader, namespace: str, spec: WebhookSpec
) -> tuple[tuple[tuple[str, str], ...], Problem | None]:
    """Custom headers with Secret values filled in, or the first problem found."""
    reader = kube if isinstance(kube, SecretReader) else SecretReader(kube)
    resolved: list[tuple[str, str]] = []
    for index, header in enumerate(spec.headers):
        if header.secret is None:
            resolved.append((header.name, header.value or ""))
            continue
        ref = header.secret
        secret = await reader.get(namespace, ref.name)
        field = f"spec.headers[{index}] ({header.name})"
        if secret is None:
            return (), Problem(
                "HeaderSecretMissing",
                f"{field}: Secret {namespace}/{ref.name} does not exist; create it with key {ref.key!r}. "
                "The webhook becomes Ready as soon as it exists.",
            )
        value = _decode(secret.get("data"), ref.key)
        if value is None and ref.key in (secret.get("data") or {}):
            return (), Problem(
                "InvalidHeaderValue",
                f"{field}: the value in Secret {namespace}/{ref.name} key {ref.key!r} is not valid UTF-8 text; "
                "store the header value as plain text.",
            )
        if value is None:
            return (), Problem(
                "HeaderSecretKeyMissing",
                f"{field}: Secret {namespace}/{ref.name} has no key {ref.key!r}; add it or fix secretKeyRef.key.",
            )
        if "\r" in value or "\n" in value:
            return (), Problem(
                "InvalidHeaderValue",
                f"{field}: the value in Secret {namespace}/{ref.name} key {ref.key!r} contains CR or LF; "
                "header values must be a single line (strip the trailing newline).",
            )
        resolved.append((header.name, value))
    return tuple(resolved), None


def secret_refs(spec: WebhookSpec) -> frozenset[str]:
    refs = {h.secret.name for h in spec.headers if h.secret}
    if spec.signing_key_ref:
        refs.add(spec.signing_key_ref.name)
    if spec.tls is not None and spec.tls.ca is not None:
        refs.add(spec.tls.ca.name)
    if spec.tls is not None and spec.tls.client_cert:
        refs.add(spec.tls.client_cert)
    return frozenset(refs)


TLS_SECRET_TYPE = "kubernetes.io/tls"


async def resolve_tls(
    kube: KubeClient | SecretReader, namespace: str, spec: WebhookSpec
) -> tuple[TLSMaterial | None, Problem | None]:
    """The webhook's CA and client certificate from its Secrets, checked to load; or the problem.

    Messages name the Secret, the key and what is wrong, never the material.
    """
    reader = kube if isinstance(kube, SecretReader) else SecretReader(kube)
    refs = spec.tls
    if refs is None:
        return None, None
    ca_pem = cert_pem = key_pem = None
    if refs.ca is not None:
        field, ref = "spec.tls.caSecretRef", refs.ca
        secret = await reader.get(namespace, ref.name)
        if secret is None:
            return None, Problem(
                "TLSSecretMissing",
                f"{field}: Secret {namespace}/{ref.name} does not exist; create it with the CA certificate(s) "
                f"in PEM under key {ref.key!r}.",
            )
        ca_pem = _decode(secret.get("data"), ref.key)
        if ca_pem is None:
            what = "is not text" if ref.key in (secret.get("data") or {}) else "does not exist"
            reason = "TLSSecretInvalid" if what == "is not text" else "TLSSecretMissing"
            return None, Problem(
                reason, f"{field}: key {ref.key!r} of Secret {namespace}/{ref.name} {what}; put the PEM CA there."
            )
        try:
            check_tls_material(TLSMaterial(ca_pem=ca_pem))
        except TLSMaterialError as exc:
            return None, Problem("TLSSecretInvalid", f"{field}: Secret {namespace}/{ref.name} key {ref.key!r}: {exc}.")
    if refs.client_cert:
        field, name = "spec.tls.clientCertSecretRef", refs.client_cert
        secret = await reader.get(namespace, name)
        if secret is None:
            return None, Problem(
                "TLSSecretMissing",
                f"{field}: Secret {namespace}/{name} does not exist; create it with "
                f"`kubectl create secret tls {name} --cert=... --key=...`.",
            )
        if secret.get("type") != TLS_SECRET_TYPE:
            return None, Problem(
                "TLSSecretInvalid",
                f"{field}: Secret {namespace}/{name} has type {secret.get('type') or 'Opaque'!r}, not "
                f"{TLS_SECRET_TYPE!r}; recreate it with `kubectl create secret tls`.",
            )
        data = secret.get("data") or {}
        cert_pem, key_pem = _decode(data, "tls.crt"), _decode(data, "tls.key")
        if not cert_pem or not key_pem:
            missing = " and ".join(k for k, v in (("tls.crt", cert_pem), ("tls.key", key_pem)) if not v)
            return None, Problem("TLSSecretInvalid", f"{field}: Secret {namespace}/{name} has no {missing}.")
        try:
            check_tls_material(TLSMaterial(cert_pem=cert_pem, key_pem=key_pem))
        except TLSMaterialError as exc:
            return None, Problem("TLSSecretInvalid", f"{field}: Secret {namespace}/{name}: {exc}.")
    return TLSMaterial(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem), None
