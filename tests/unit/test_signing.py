"""Signing keys, body bytes and signatures, against the contract's test vector and the standardwebhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhook_operator.signing import (
    body_with_data,
    build_body,
    encode_json,
    format_created_at,
    generate_signing_key,
    logto_signature,
    message_id,
    signature_headers,
    standard_signature,
    standard_webhooks_secret,
)

VECTOR_KEY = "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
VECTOR_BODY = (
    b'{"hookId":"shop/billing-sync","event":"User.Created","createdAt":"2026-11-28T03:00:00.000Z",'
    b'"eventId":"0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11","data":{"id":"u1"}}'
)
VECTOR_LOGTO = "665937caf6db6b5a3de8a6be496ebf7dc68d43841d217ca6871fc0261a2ff8e1"
VECTOR_ID = "msg_2f1d8c0a9b7e6d5c4b3a29180706f5e4"
VECTOR_TIMESTAMP = 1795834800
VECTOR_SIGNATURE = "v1,xW39dQz8t7DhJsTxK5MIGbqmmxpE/GkBW/SQU5vm2wE="


# --- keys --------------------------------------------------------------------------------


def test_generated_keys_are_32_alphanumeric_characters() -> None:
    for _ in range(200):
        assert re.fullmatch(r"[0-9A-Za-z]{32}", generate_signing_key())


def test_generated_keys_differ_and_use_the_whole_alphabet() -> None:
    keys = {generate_signing_key() for _ in range(200)}
    assert len(keys) == 200
    seen = set("".join(keys))
    # 6400 draws from 62 symbols: every symbol shows up unless the generator is broken.
    assert len(seen) == 62


def test_standard_webhooks_secret_is_base64_of_the_key_bytes() -> None:
    secret = standard_webhooks_secret(VECTOR_KEY)
    assert secret == "whsec_" + base64.b64encode(VECTOR_KEY.encode()).decode()
    assert secret == "whsec_YTFCMmMzRDRlNUY2ZzdIOGk5SjBrMUwybTNONG81UDY="
    assert base64.b64decode(secret.removeprefix("whsec_")) == VECTOR_KEY.encode()


# --- message ids and timestamps ----------------------------------------------------------


def test_message_id_is_stable_for_one_event_and_webhook() -> None:
    first = message_id("0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11", "5d0b7e9a-1111-2222-3333-444455556666")
    again = message_id("0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11", "5d0b7e9a-1111-2222-3333-444455556666")
    assert first == again
    assert re.fullmatch(r"msg_[0-9a-f]{32}", first)


def test_message_id_differs_per_event_and_per_webhook() -> None:
    ids = {
        message_id("event-a", "hook-1"),
        message_id("event-a", "hook-2"),
        message_id("event-b", "hook-1"),
        message_id("event-b", "hook-2"),
    }
    assert len(ids) == 4


def test_message_id_does_not_confuse_where_one_uid_ends() -> None:
    assert message_id("ab", "c") != message_id("a", "bc")


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC), "2026-11-28T03:00:00.000Z"),
        (datetime(2026, 11, 28, 3, 0, 0, 123999, tzinfo=UTC), "2026-11-28T03:00:00.123Z"),
        (
            datetime(2026, 11, 28, 4, 30, 0, 5000, tzinfo=timezone(timedelta(hours=1, minutes=30))),
            "2026-11-28T03:00:00.005Z",
        ),
        (datetime(2026, 1, 2, 3, 4, 5, 999999), "2026-01-02T03:04:05.999Z"),
        (datetime(999, 1, 1, tzinfo=UTC), "0999-01-01T00:00:00.000Z"),
    ],
)
def test_created_at_is_utc_with_milliseconds(ts: datetime, text: str) -> None:
    assert format_created_at(ts) == text


# --- body --------------------------------------------------------------------------------


def test_body_matches_the_contract_vector_byte_for_byte() -> None:
    body = build_body(
        hook_id="shop/billing-sync",
        event="User.Created",
        created_at="2026-11-28T03:00:00.000Z",
        event_id="0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11",
        data={"id": "u1"},
    )
    assert body == VECTOR_BODY


def test_body_keys_are_in_contract_order_with_null_data() -> None:
    body = build_body(hook_id="ns/w", event="E", created_at="t", event_id="uid", data=None)
    assert body == b'{"hookId":"ns/w","event":"E","createdAt":"t","eventId":"uid","data":null}'


def test_test_payload_appends_test_true_last() -> None:
    body = build_body(hook_id="ns/w", event="User.Test", created_at="t", event_id="uid", data={"a": 1}, test=True)
    assert body == b'{"hookId":"ns/w","event":"User.Test","createdAt":"t","eventId":"uid","data":{"a":1},"test":true}'
    assert list(json.loads(body)) == ["hookId", "event", "createdAt", "eventId", "data", "test"]


def test_body_is_utf8_not_ascii_escaped() -> None:
    body = build_body(hook_id="ns/w", event="E", created_at="t", event_id="u", data={"name": "Jürgen 🦊"})
    assert "Jürgen 🦊".encode() in body
    assert b"\\u" not in body


def test_body_keeps_data_key_order_and_nesting() -> None:
    data = {"z": [1, 2.5, True, None], "a": {"y": "x", "b": ""}}
    body = build_body(hook_id="ns/w", event="E", created_at="t", event_id="u", data=data)
    assert body.endswith(b'"data":{"z":[1,2.5,true,null],"a":{"y":"x","b":""}}}')


@pytest.mark.parametrize(
    "text",
    ["plain", 'a"quote', "back\\slash\\", 'end\\"', "zoë 🦊", "\u2028 line separator", "tab\t nul\x00", "\x7f\x1f"],
)
@pytest.mark.parametrize("test", [False, True])
def test_a_body_around_data_encoded_once_is_byte_for_byte_the_same(text: str, test: bool) -> None:
    # One encoding of an event's data serves all its webhooks' bodies; the bytes, and so the
    # signatures, must be what encoding the whole body gives, for any string json escapes.
    data = {"text": text, "n": [1, 2.5, 10**30, None, True], text: {"nested": text}}
    fields = {"hook_id": f"ns/{text}", "event": f"E.{text}", "created_at": text, "event_id": text + "-id"}
    whole = json.dumps(
        {
            "hookId": fields["hook_id"],
            "event": fields["event"],
            "createdAt": text,
            "eventId": fields["event_id"],
            "data": data,
        }
        | ({"test": True} if test else {}),
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    assert body_with_data(**fields, data_json=encode_json(data), test=test) == whole
    assert build_body(**fields, data=data, test=test) == whole


def test_a_body_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        build_body(hook_id="ns/w", event="E", created_at="t", event_id="u", data={"x": float("nan")})
    with pytest.raises(UnicodeEncodeError):
        build_body(hook_id="ns/w", event="E", created_at="t", event_id="u\ud800", data=None)


# --- signatures --------------------------------------------------------------------------


def test_logto_signature_matches_the_contract_vector() -> None:
    assert logto_signature(VECTOR_KEY, VECTOR_BODY) == VECTOR_LOGTO


def test_standard_signature_matches_the_contract_vector() -> None:
    assert standard_signature(VECTOR_KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_headers_for_the_contract_vector() -> None:
    assert signature_headers([VECTOR_KEY], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1795834800",
        "webhook-signature": VECTOR_SIGNATURE,
        "logto-signature-sha-256": VECTOR_LOGTO,
    }


def test_standardwebhooks_library_signs_the_vector_identically() -> None:
    library = Webhook(standard_webhooks_secret(VECTOR_KEY))
    signed = library.sign(VECTOR_ID, datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=UTC), VECTOR_BODY.decode())
    assert signed == VECTOR_SIGNATURE


def test_a_logto_receiver_verifies_the_body() -> None:
    # What a receiver written for Logto does: HMAC the raw body with the key and compare hex digests.
    expected = hmac.new(VECTOR_KEY.encode(), VECTOR_BODY, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(
        expected, signature_headers([VECTOR_KEY], VECTOR_ID, 1, VECTOR_BODY)["logto-signature-sha-256"]
    )


def _fresh_body() -> bytes:
    return build_body(
        hook_id="shop/billing-sync",
        event="User.Created",
        created_at=format_created_at(datetime.now(UTC)),
        event_id="0b6f0c3e-4a8e-4d55-9a59-3f5a1f0e2c11",
        data={"id": "u1", "name": "Zoë"},
    )


def test_standardwebhooks_library_verifies_a_current_delivery() -> None:
    # The library rejects timestamps more than 5 minutes from now, so this uses the current time.
    key = generate_signing_key()
    body = _fresh_body()
    headers = signature_headers([key], message_id("e", "w"), int(time.time()), body)
    assert Webhook(standard_webhooks_secret(key)).verify(body, headers) == json.loads(body)


def test_standardwebhooks_library_rejects_a_tampered_body_or_wrong_key() -> None:
    key = generate_signing_key()
    body = _fresh_body()
    headers = signature_headers([key], message_id("e", "w"), int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_webhooks_secret(key)).verify(body.replace(b"u1", b"u2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_webhooks_secret(generate_signing_key())).verify(body, headers)


def test_during_rotation_both_keys_sign_and_either_secret_verifies() -> None:
    new_key, old_key = generate_signing_key(), generate_signing_key()
    body = _fresh_body()
    timestamp = int(time.time())
    headers = signature_headers([new_key, old_key], VECTOR_ID, timestamp, body)

    signatures = headers["webhook-signature"].split(" ")
    assert signatures == [
        standard_signature(new_key, VECTOR_ID, timestamp, body),
        standard_signature(old_key, VECTOR_ID, timestamp, body),
    ]
    # The Logto header has room for one signature only: the current key's.
    assert headers["logto-signature-sha-256"] == logto_signature(new_key, body)

    assert Webhook(standard_webhooks_secret(new_key)).verify(body, headers) == json.loads(body)
    assert Webhook(standard_webhooks_secret(old_key)).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_webhooks_secret(generate_signing_key())).verify(body, headers)


def test_the_signature_covers_id_and_timestamp() -> None:
    base = standard_signature(VECTOR_KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert standard_signature(VECTOR_KEY, "msg_other", VECTOR_TIMESTAMP, VECTOR_BODY) != base
    assert standard_signature(VECTOR_KEY, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY) != base


def test_signing_without_a_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one signing key"):
        signature_headers([], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
