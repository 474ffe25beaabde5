"""An ingress request turned into (event, data, eventId), or a typed error with the HTTP status and a message.

Pure: no I/O, so every malformed input is a unit test. Three forms are accepted on
``POST /v1/namespaces/<namespace>/events``: ``{"event", "data"}`` as ``application/json``, a
structured CloudEvent (``application/cloudevents+json``) and a binary CloudEvent (``ce-*``
headers, the body is the data).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The same rules as the WebhookEvent CRD (crds/): spec.event and spec.eventId.
EVENT_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*")
EVENT_NAME_MAX = 253
EVENT_ID_RE = re.compile(r"[!-~]+")
EVENT_ID_MAX = 128
NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
NAMESPACE_MAX = 63
PATH_RE = re.compile(r"/v1/namespaces/([^/]+)/events")

JSON_TYPE = "application/json"
CLOUDEVENT_TYPE = "application/cloudevents+json"
IDEMPOTENCY_HEADER = "idempotency-key"
CLOUDEVENTS_SPEC_VERSION = "1.0"
JSON_KEYS = frozenset({"event", "data"})


class IngressError(Exception):
    """What the client did wrong (or what the operator cannot do now): an HTTP status and a message for it."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Publication:
    event: str
    data: Any
    event_id: str | None  # given by the client (CloudEvent id or Idempotency-Key), else None


def bad_request(message: str) -> IngressError:
    return IngressError(400, message)


def namespace_of(path: str) -> str | None:
    """The namespace of an ingress path, None for any other path (a 404); 400 for an invalid namespace name."""
    match = PATH_RE.fullmatch(path)
    if match is None:
        return None
    namespace = match.group(1)
    if len(namespace) > NAMESPACE_MAX or not NAMESPACE_RE.fullmatch(namespace):
        raise bad_request(
            f"invalid namespace {namespace[:80]!r}: a namespace name is at most 63 lower-case letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return namespace


def check_event_name(event: object, field: str) -> str:
    if not isinstance(event, str) or not event:
        raise bad_request(f"{field} is missing: give the event name, e.g. User.Created")
    if len(event) > EVENT_NAME_MAX or not EVENT_NAME_RE.fullmatch(event):
        raise bad_request(
            f"invalid event name {event[:80]!r} in {field}: use dot-separated words of letters and digits, "
            f"each starting with a letter, e.g. User.Created (at most {EVENT_NAME_MAX} characters, no wildcards)"
        )
    return event


def check_event_id(event_id: object, field: str) -> str:
    if not isinstance(event_id, str) or not event_id:
        raise bad_request(f"{field} is missing or empty: give the event's id, e.g. a UUID")
    if len(event_id) > EVENT_ID_MAX or not EVENT_ID_RE.fullmatch(event_id):
        raise bad_request(
            f"invalid event id in {field}: use 1 to {EVENT_ID_MAX} visible ASCII characters "
            "(letters, digits and punctuation, no spaces), e.g. a UUID"
        )
    return event_id


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """``application/json; charset=utf-8`` -> (``application/json``, {``charset``: ``utf-8``})."""
    if not content_type:
        return "", {}
    kind, *rest = content_type.split(";")
    params = {}
    for item in rest:
        name, _, value = item.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def _is_json(kind: str) -> bool:
    return kind == JSON_TYPE or kind.endswith("+json") or kind == "text/json"


def _json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request(f"{what} is not UTF-8") from None
    except ValueError as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}") from None


def data_from_bytes(raw: bytes, content_type: str | None, what: str) -> Any:
    """CloudEvent data bytes as a JSON value: JSON types parsed, text/* as a string, nothing as null."""
    kind, params = media_type(content_type)
    if not raw:
        return None
    if not kind or _is_json(kind):
        return _json(raw, what)
    if kind.startswith("text/"):
        charset = params.get("charset", "utf-8")
        try:
            return raw.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise bad_request(f"{what} is not valid {charset} text") from None
    raise bad_request(
        f"unsupported data content type {kind!r} in {what}: the event's data must be JSON "
        "(application/json or a +json type) or text (text/*)"
    )


def parse_publication(headers: Mapping[str, str], body: bytes) -> Publication:
    """The event a request publishes. ``headers`` must be looked up case-insensitively (aiohttp's are)."""
    kind, _ = media_type(headers.get("content-type"))
    if headers.get("ce-specversion") is not None:
        return _binary_cloudevent(headers, body)
    if kind == CLOUDEVENT_TYPE:
        return _structured_cloudevent(body)
    if kind == JSON_TYPE:
        return _plain_json(headers, body)
    if kind == "application/cloudevents-batch+json":
        raise bad_request("batched CloudEvents are not supported: send one event per request")
    raise bad_request(
        f"unsupported content type {kind or '(none)'!r}: send application/json with "
        '{"event": ..., "data": ...}, a structured CloudEvent (application/cloudevents+json) '
        "or a binary CloudEvent (ce-specversion, ce-type, ce-id and ce-source headers)"
    )


def _plain_json(headers: Mapping[str, str], body: bytes) -> Publication:
    payload = _json(body, "the request body")
    if not isinstance(payload, dict):
        raise bad_request('the request body must be a JSON object: {"event": "User.Created", "data": {...}}')
    unknown = sorted(set(payload) - JSON_KEYS)
    if unknown:
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: the body has only event and data")
    event = check_event_name(payload.get("event"), "event")
    key = headers.get(IDEMPOTENCY_HEADER)
    event_id = check_event_id(key, "the Idempotency-Key header") if key is not None else None
    return Publication(event, payload.get("data"), event_id)


def _check_spec_version(version: object, field: str) -> None:
    if version != CLOUDEVENTS_SPEC_VERSION:
        raise bad_request(f"{field} must be {CLOUDEVENTS_SPEC_VERSION!r} (CloudEvents 1.0), got {version!r}")


def _structured_cloudevent(body: bytes) -> Publication:
    payload = _json(body, "the CloudEvent")
    if not isinstance(payload, dict):
        raise bad_request("a structured CloudEvent must be a JSON object")
    _check_spec_version(payload.get("specversion"), "specversion")
    event = check_event_name(payload.get("type"), "type")
    event_id = check_event_id(payload.get("id"), "id")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        raise bad_request("source is missing: a CloudEvent needs a source (a URI reference)")
    content_type = payload.get("datacontenttype")
    if content_type is not None and not isinstance(content_type, str):
        raise bad_request("datacontenttype must be a string")
    if "data" in payload and "data_base64" in payload:
        raise bad_request("a CloudEvent has data or data_base64, not both")
    if "data_base64" in payload:
        encoded = payload["data_base64"]
        if not isinstance(encoded, str):
            raise bad_request("data_base64 must be a base64 string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("data_base64 is not valid base64") from None
        return Publication(event, data_from_bytes(raw, content_type, "data_base64"), event_id)
    data = payload.get("data")
    kind, _ = media_type(content_type)
    if kind and not _is_json(kind) and not kind.startswith("text/"):
        raise bad_request(
            f"unsupported datacontenttype {kind!r}: the event's data must be JSON or text; "
            "binary data cannot be delivered in a JSON webhook body"
        )
    return Publication(event, data, event_id)


def _binary_cloudevent(headers: Mapping[str, str], body: bytes) -> Publication:
    _check_spec_version(headers.get("ce-specversion"), "the ce-specversion header")
    event = check_event_name(headers.get("ce-type"), "the ce-type header")
    event_id = check_event_id(headers.get("ce-id"), "the ce-id header")
    if not headers.get("ce-source"):
        raise bad_request("the ce-source header is missing: a CloudEvent needs a source (a URI reference)")
    return Publication(event, data_from_bytes(body, headers.get("content-type"), "the request body"), event_id)


def event_object_name(namespace: str, event_id: str) -> str:
    """The WebhookEvent name of a client-given id: the same (namespace, id) always names the same object."""
    return "evt-" + hashlib.sha256(f"{namespace}\x00{event_id}".encode()).hexdigest()[:40]


def event_name_prefix(event: str) -> str:
    """``generateName`` for an event without a client id: ``User.Created`` -> ``user-created-``."""
    return event.lower().replace(".", "-")[:52].rstrip("-") + "-"
