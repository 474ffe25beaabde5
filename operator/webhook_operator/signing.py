"""Signing keys, the delivery body and its signatures (Logto's header and Standard Webhooks), byte-exact."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import json.encoder
import secrets
import string
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

KEY_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_LENGTH = 32
STANDARD_WEBHOOKS_PREFIX = "whsec_"

HEADER_WEBHOOK_ID = "webhook-id"
HEADER_WEBHOOK_TIMESTAMP = "webhook-timestamp"
HEADER_WEBHOOK_SIGNATURE = "webhook-signature"
HEADER_LOGTO_SIGNATURE = "logto-signature-sha-256"


def generate_signing_key() -> str:
    """A new key: 32 random characters from [0-9A-Za-z], the format Logto uses."""
    return "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))


def standard_webhooks_secret(signing_key: str) -> str:
    """The same key in Standard Webhooks form, so its libraries verify with the exact key bytes."""
    return STANDARD_WEBHOOKS_PREFIX + base64.b64encode(signing_key.encode("utf-8")).decode("ascii")


def message_id(event_uid: str, webhook_uid: str) -> str:
    """The `webhook-id` of one event sent to one webhook: derived, not stored, so restarts keep it."""
    digest = hashlib.sha256(f"{event_uid}\x00{webhook_uid}".encode()).hexdigest()
    return "msg_" + digest[:32]


def format_created_at(ts: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`; a naive datetime is taken to be UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    # isoformat truncates to milliseconds and, unlike strftime, always writes a four-digit year.
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def build_body(
    *,
    hook_id: str,
    event: str,
    created_at: str,
    event_id: str,
    data: object,
    test: bool = False,
) -> bytes:
    """The delivery body: compact UTF-8 JSON with the keys in contract order (signatures cover these bytes)."""
    return body_with_data(
        hook_id=hook_id, event=event, created_at=created_at, event_id=event_id, data_json=encode_json(data), test=test
    )


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON as a delivery body writes it (non-ASCII as is, no NaN)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def body_with_data(
    *, hook_id: str, event: str, created_at: str, event_id: str, data_json: bytes, test: bool = False
) -> bytes:
    """``build_body`` around ``data`` already encoded by ``encode_json``: the same bytes, without encoding
    an event's data again for each of its webhooks."""
    return b"".join(
        (
            b'{"hookId":',
            _string(hook_id).encode(),
            b',"event":',
            _string(event).encode(),
            b',"createdAt":',
            _string(created_at).encode(),
            b',"eventId":',
            _string(event_id).encode(),
            b',"data":',
            data_json,
            b',"test":true}' if test else b"}",
        )
    )


# A JSON string as json.dumps(..., ensure_ascii=False) writes it (json's own encoder, in C).
_string: Callable[[str], str] = json.encoder.encode_basestring


# An HMAC keyed once per signing key, copied per signature: keying costs more than the copy.
_KEYED: dict[str, hmac.HMAC] = {}
_KEYED_MAX = 20_000  # at most two keys per webhook in use at once


def _keyed(signing_key: str) -> hmac.HMAC:
    keyed = _KEYED.get(signing_key)
    if keyed is None:
        if len(_KEYED) >= _KEYED_MAX:
            _KEYED.clear()
        keyed = _KEYED[signing_key] = hmac.new(signing_key.encode("utf-8"), digestmod=hashlib.sha256)
    return keyed.copy()


def _hmac_sha256(signing_key: str, *parts: bytes) -> bytes:
    mac = _keyed(signing_key)
    for part in parts:
        mac.update(part)
    return mac.digest()


def logto_signature(signing_key: str, body: bytes) -> str:
    """`logto-signature-sha-256`: hex HMAC-SHA256 of the body, keyed with the key's UTF-8 bytes."""
    return _hmac_sha256(signing_key, body).hex()


def standard_signature(signing_key: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One Standard Webhooks signature, `v1,<base64>`, over `{id}.{timestamp}.{body}`.

    The key is the UTF-8 bytes of `signing_key`, which is what `standard_webhooks_secret` encodes.
    """
    prefix = f"{msg_id}.{timestamp}.".encode()
    return "v1," + base64.b64encode(_hmac_sha256(signing_key, prefix, body)).decode("ascii")


def signature_headers(keys: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """All signature headers of one attempt; `keys[0]` is the current key, the rest are keys still in overlap."""
    if not keys:
        raise ValueError("at least one signing key is needed to sign a delivery")
    return {
        HEADER_WEBHOOK_ID: msg_id,
        HEADER_WEBHOOK_TIMESTAMP: str(timestamp),
        HEADER_WEBHOOK_SIGNATURE: " ".join(standard_signature(key, msg_id, timestamp, body) for key in keys),
        HEADER_LOGTO_SIGNATURE: logto_signature(keys[0], body),
    }
