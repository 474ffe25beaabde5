"""What travels on the bus (pure): subjects, published events, delivery messages, request-log records.

Subjects (``<webhook>`` has its dots written as ``~``, which no Kubernetes name contains):

- ``webhook-operator.events.<namespace>``: what applications publish, ``{"event", "data"}``;
- ``webhook-operator.deliveries.<namespace>.<webhook>``: one message per (event, webhook): from fan-out when
  the event has one subscriber on this path, a retry, a redelivery, or one waiting for its webhook;
- ``webhook-operator.deliveries.<namespace>._batch``: from fan-out, one message for up to ``BATCH_MAX`` of
  an event's subscribers (``_`` is in no Kubernetes name): taken by one replica, which attempts them all;
- ``webhook-operator.controlled.<namespace>.<webhook>``: the same for a webhook with ``spec.rateLimit`` or
  ``spec.ordering: Ordered``, pulled by the Lease holder alone through the webhook's own consumer;
- ``webhook-operator.log.<namespace>.<webhook>``: one record per attempt, the request log and the
  source of health.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from webhook_operator.ingress.parse import EVENT_NAME_MAX, EVENT_NAME_RE
from webhook_operator.signing import encode_json

EVENTS_PREFIX = "webhook-operator.events."
DELIVERIES_PREFIX = "webhook-operator.deliveries."
LOG_PREFIX = "webhook-operator.log."
CONTROLLED_PREFIX = "webhook-operator.controlled."
EVENTS_STREAM = "WEBHOOK_OPERATOR_EVENTS"
DELIVERIES_STREAM = "WEBHOOK_OPERATOR_DELIVERIES"
LOG_STREAM = "WEBHOOK_OPERATOR_LOG"
CONTROLLED_STREAM = "WEBHOOK_OPERATOR_CONTROLLED"
CONSUMER_PREFIX = "controlled_"
FANOUT_CONSUMER = "fanout"
DELIVER_CONSUMER = "deliver"
HEALTH_CONSUMER = "health"
MSG_ID_HEADER = "Nats-Msg-Id"
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d4c0e-8f57-4a43-9a49-5b1b8f0c6a11")
FINAL = ("Succeeded", "Failed")
BATCH_MAX = 64  # deliveries of one event in one message at most
BATCH_TOKEN = "_batch"


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of the operator's own fields (names, ids, times, counts, texts): orjson, or json
    with ASCII escapes for what orjson refuses (a string with a lone surrogate, an integer past 64 bits)."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":")).encode()


def encode_data(data: Any) -> bytes:
    """An event's ``data`` as the delivery message carries it: json's compact text, once per event (orjson
    could not write integers past 64 bits: the body must come out as in CR mode); ValueError for what no
    body can carry (NaN, a lone surrogate)."""
    return encode_json(data)


def events_subject(namespace: str) -> str:
    return EVENTS_PREFIX + namespace


def deliveries_subject(namespace: str, webhook: str) -> str:
    return f"{DELIVERIES_PREFIX}{namespace}.{webhook.replace('.', '~')}"


def batch_subject(namespace: str) -> str:
    return f"{DELIVERIES_PREFIX}{namespace}.{BATCH_TOKEN}"


def log_subject(namespace: str, webhook: str) -> str:
    return f"{LOG_PREFIX}{namespace}.{webhook.replace('.', '~')}"


def controlled_subject(namespace: str, webhook: str) -> str:
    return f"{CONTROLLED_PREFIX}{namespace}.{webhook.replace('.', '~')}"


def controlled_consumer(namespace: str, webhook: str) -> str:
    """The durable consumer of one webhook's controlled deliveries: readable (``_`` is in no Kubernetes
    name), hashed when too long for a file name; its filter subject says whose it is."""
    name = f"{CONSUMER_PREFIX}{namespace}_{webhook.replace('.', '~')}"
    if len(name) <= 200:
        return name
    return CONSUMER_PREFIX + hashlib.sha256(f"{namespace}/{webhook}".encode()).hexdigest()[:40]


def subject_key(prefix: str, subject: str) -> tuple[str, str] | None:
    """(namespace, webhook) of a ``<prefix><namespace>.<webhook>`` subject."""
    parts = subject[len(prefix) :].split(".") if subject.startswith(prefix) else []
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1].replace("~", ".")


def log_subject_key(subject: str) -> tuple[str, str] | None:
    """(namespace, webhook) of a request-log subject."""
    return subject_key(LOG_PREFIX, subject)


def namespace_of_subject(subject: str) -> str | None:
    rest = subject[len(EVENTS_PREFIX) :] if subject.startswith(EVENTS_PREFIX) else ""
    return rest if rest and "." not in rest else None


def derived_event_id(stream_created: str, sequence: int) -> str:
    """The eventId of an event published without Nats-Msg-Id: stable for its stream sequence."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{stream_created}/{sequence}"))


@dataclass(frozen=True)
class Published:
    namespace: str
    event: str
    data: Any
    data_json: bytes = b"null"  # encode_data(data)


class BadMessage(Exception):
    """A published message that can never be delivered: terminated and counted, by ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_published(subject: str, payload: bytes) -> Published:
    namespace = namespace_of_subject(subject)
    if namespace is None:
        raise BadMessage("subject", f"not an events subject: {subject[:200]}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage("json", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadMessage("json", "the body must be a JSON object")
    event = body.get("event")
    if not isinstance(event, str) or len(event) > EVENT_NAME_MAX or not EVENT_NAME_RE.fullmatch(event):
        raise BadMessage("event", "'event' must be an event name such as User.Created")
    data = body.get("data")
    try:
        data_json = encode_data(data)
    except (UnicodeEncodeError, ValueError) as exc:  # NaN, Infinity, an escaped lone surrogate: no body has them
        raise BadMessage("json", f"'data' cannot be sent as JSON: {exc}") from None
    return Published(namespace, event, data, data_json)


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook, as fan-out wrote it (the webhook's uid: a recreated webhook gets none)."""

    namespace: str
    webhook: str
    webhook_uid: str
    id: str  # the webhook-id header
    event: str
    event_id: str
    created_at: str  # createdAt of the body, the time the event was stored on the bus
    data: Any
    redelivery: str | None = None  # requestedAt of a `kubectl webhooks redeliver` (or replay)
    seq: int = 0  # the event's sequence in the events stream: the order of spec.ordering Ordered
    # A delivery published on its own to be attempted later (a retry from a batch; one put off while its
    # webhook was too slow for what waited): attempts made, and when the next is due (the message's first
    # receipt waits until then; its n-th receipt is attempt after + n - 1).
    after: int = 0
    due: str | None = None

    def encode(self, data: bytes | None = None) -> bytes:
        """The message; ``data``: ``encode_data(self.data)`` when the caller has it (fan-out, once per event)."""
        head = dumps(
            {
                "namespace": self.namespace,
                "webhook": self.webhook,
                "webhookUid": self.webhook_uid,
                "id": self.id,
                "event": self.event,
                "eventId": self.event_id,
                "createdAt": self.created_at,
            }
        )
        tail: dict[str, Any] = {}
        if self.redelivery:
            tail["redelivery"] = self.redelivery
        if self.seq:
            tail["seq"] = self.seq
        if self.due is not None:
            tail["after"] = self.after
            tail["due"] = self.due
        rest = b"," + dumps(tail)[1:] if tail else b"}"
        return head[:-1] + b',"data":' + (encode_data(self.data) if data is None else data) + rest

    @classmethod
    def decode(cls, payload: bytes) -> Delivery:
        """One delivery message (not a batch)."""
        body = _load(payload)
        if "targets" in body:
            raise BadMessage("delivery", "not a delivery message: a batch")
        return _delivery(body, body)

    def retry(self, attempts: int, due: str) -> Delivery:
        """This delivery as a message of its own, after ``attempts`` attempts, next due at ``due``."""
        return replace(self, after=attempts, due=due)


def _load(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload.decode())  # UTF-8 only: a final log record carries these bytes as they are
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadMessage("delivery", f"not a delivery message: {exc}") from None
    if not isinstance(body, dict):
        raise BadMessage("delivery", "not a delivery message: not a JSON object")
    return body


def _delivery(body: dict[str, Any], target: dict[str, Any]) -> Delivery:
    try:
        return Delivery(
            namespace=str(body["namespace"]),
            webhook=str(target["webhook"]),
            webhook_uid=str(target["webhookUid"]),
            id=str(target["id"]),
            event=str(body["event"]),
            event_id=str(body["eventId"]),
            created_at=str(body["createdAt"]),
            data=body.get("data"),
            redelivery=body.get("redelivery"),
            seq=int(body.get("seq") or 0),
            after=int(target.get("after") or 0),
            due=target.get("due"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadMessage("delivery", f"not a delivery message: {exc}") from None


def encode_batch(deliveries: Sequence[Delivery], data: bytes) -> bytes:
    """One message for several deliveries of one event (fan-out; ``data``: ``encode_data``), data last."""
    first = deliveries[0]
    head = dumps(
        {
            "namespace": first.namespace,
            "event": first.event,
            "eventId": first.event_id,
            "createdAt": first.created_at,
            "seq": first.seq,
            "targets": [{"webhook": d.webhook, "webhookUid": d.webhook_uid, "id": d.id} for d in deliveries],
        }
    )
    return head[:-1] + b',"data":' + data + b"}"


def decode_deliveries(payload: bytes) -> tuple[list[Delivery], bytes | None]:
    """The deliveries of a message on the deliveries path (one, or a batch's), and for a batch its data as
    written (each delivery's own message, for its log record, is spliced from it: ``Delivery.encode``)."""
    body = _load(payload)
    targets = body.get("targets")
    if targets is None:
        return [_delivery(body, body)], None
    if not isinstance(targets, list) or not targets:
        raise BadMessage("delivery", "not a delivery message: 'targets' must be a list of webhooks")
    marker = payload.find(b',"data":')
    data = payload[marker + len(b',"data":') : -1] if marker > 0 and payload.endswith(b"}") else None
    return [_delivery(body, target) for target in targets], data


def batch_id(deliveries: Sequence[Delivery]) -> str:
    """The Nats-Msg-Id of a batch: the same for the same deliveries in any order, so a fan-out repeated after a
    crash, by any replica, is dropped by the stream (a changed subscriber set makes another batch: a repeat,
    never a loss)."""
    digest = hashlib.sha256("\n".join(sorted(d.id + "/" + (d.redelivery or "") for d in deliveries)).encode())
    return "batch_" + digest.hexdigest()[:40]


def log_record_id(delivery: Delivery, delivered: int, outcome: str) -> str:
    """The ``Nats-Msg-Id`` of a request-log record. One per attempt while retrying; one per delivery (and
    redelivery) once final, so a delivery repeated after its replica died between the final record and
    the ack is logged, and counted in health, once (the log stream drops the repeat in its window)."""
    if outcome in FINAL:
        return f"{delivery.id}/{delivery.redelivery or ''}/final"
    return f"{delivery.id}/{delivery.redelivery or ''}/{delivered}/{outcome}"


def log_record(
    delivery: Delivery,
    *,
    outcome: str,
    attempts: int,
    time: str,
    status_code: int | None,
    duration_ms: int,
    error: str,
    response_body: str,
    next_attempt_time: str | None = None,
    replica: str = "",
    message: bytes | None = None,
) -> bytes:
    """One request-log record. A final one carries the event, so `redeliver` (Failed) and `replay`
    (Succeeded or Failed) can send it again: ``message``, the delivery message as received (the same
    JSON ``delivery.encode()`` would write), else encoded here."""
    record: dict[str, Any] = {
        "time": time,
        "event": delivery.event,
        "eventId": delivery.event_id,
        "id": delivery.id,
        "webhookUid": delivery.webhook_uid,
        "outcome": outcome,
        "attempts": attempts,
        "durationMs": duration_ms,
        "error": error,
        "responseBody": response_body[:1024],
        "replica": replica,
    }
    if status_code is not None:
        record["statusCode"] = status_code
    if next_attempt_time:
        record["nextAttemptTime"] = next_attempt_time
    if delivery.redelivery:
        record["redelivery"] = delivery.redelivery
    encoded = dumps(record)
    if outcome not in FINAL:
        return encoded
    return encoded[:-1] + b',"delivery":' + (delivery.encode() if message is None else message) + b"}"
