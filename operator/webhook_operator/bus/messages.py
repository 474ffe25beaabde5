"""What travels on the bus (pure): subjects, published events, delivery messages, request-log records.

Subjects (``<webhook>`` has its dots written as ``~``, which no Kubernetes name contains):

- ``webhook-operator.events.<namespace>``: what applications publish, ``{"event", "data"}``;
- ``webhook-operator.deliveries.<namespace>.<webhook>``: one message per (event, webhook), from fan-out;
- ``webhook-operator.log.<namespace>.<webhook>``: one record per attempt, the request log and the
  source of health.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from webhook_operator.ingress.parse import EVENT_NAME_MAX, EVENT_NAME_RE

EVENTS_PREFIX = "webhook-operator.events."
DELIVERIES_PREFIX = "webhook-operator.deliveries."
LOG_PREFIX = "webhook-operator.log."
EVENTS_STREAM = "WEBHOOK_OPERATOR_EVENTS"
DELIVERIES_STREAM = "WEBHOOK_OPERATOR_DELIVERIES"
LOG_STREAM = "WEBHOOK_OPERATOR_LOG"
FANOUT_CONSUMER = "fanout"
DELIVER_CONSUMER = "deliver"
HEALTH_CONSUMER = "health"
MSG_ID_HEADER = "Nats-Msg-Id"
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d4c0e-8f57-4a43-9a49-5b1b8f0c6a11")
FINAL = ("Succeeded", "Failed")


def events_subject(namespace: str) -> str:
    return EVENTS_PREFIX + namespace


def deliveries_subject(namespace: str, webhook: str) -> str:
    return f"{DELIVERIES_PREFIX}{namespace}.{webhook.replace('.', '~')}"


def log_subject(namespace: str, webhook: str) -> str:
    return f"{LOG_PREFIX}{namespace}.{webhook.replace('.', '~')}"


def log_subject_key(subject: str) -> tuple[str, str] | None:
    """(namespace, webhook) of a request-log subject."""
    parts = subject[len(LOG_PREFIX) :].split(".") if subject.startswith(LOG_PREFIX) else []
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1].replace("~", ".")


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
    return Published(namespace, event, body.get("data"))


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
    redelivery: str | None = None  # requestedAt of a `kubectl webhooks redeliver`

    def encode(self) -> bytes:
        body = {
            "namespace": self.namespace,
            "webhook": self.webhook,
            "webhookUid": self.webhook_uid,
            "id": self.id,
            "event": self.event,
            "eventId": self.event_id,
            "createdAt": self.created_at,
            "data": self.data,
        }
        if self.redelivery:
            body["redelivery"] = self.redelivery
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Delivery:
        try:
            body = json.loads(payload)
            return cls(
                namespace=str(body["namespace"]),
                webhook=str(body["webhook"]),
                webhook_uid=str(body["webhookUid"]),
                id=str(body["id"]),
                event=str(body["event"]),
                event_id=str(body["eventId"]),
                created_at=str(body["createdAt"]),
                data=body.get("data"),
                redelivery=body.get("redelivery"),
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise BadMessage("delivery", f"not a delivery message: {exc}") from None


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
) -> bytes:
    """One request-log record. A failed one carries the event, so `redeliver` can send it again."""
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
    if outcome == "Failed":
        record["delivery"] = json.loads(delivery.encode())
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
