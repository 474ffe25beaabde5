"""The ingress's request parsing: every accepted form, and a message naming what is wrong in every rejected one."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from multidict import CIMultiDict

from webhook_operator.ingress.parse import (
    IngressError,
    Publication,
    event_name_prefix,
    event_object_name,
    namespace_of,
    parse_publication,
)


def parse(headers: dict[str, str], body: bytes | str | Any) -> Publication:
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return parse_publication(CIMultiDict(headers), raw)


def rejected(headers: dict[str, str], body: bytes | str | Any) -> str:
    with pytest.raises(IngressError) as info:
        parse(headers, body)
    assert info.value.status == 400
    return info.value.message


JSON = {"Content-Type": "application/json"}


def cloudevent(data: Any, **attributes: str) -> CloudEvent:
    return CloudEvent({"type": "User.Created", "source": "/billing", "id": "evt-1", **attributes}, data)


# -- paths --------------------------------------------------------------------------------
def test_the_namespace_comes_from_the_path() -> None:
    assert namespace_of("/v1/namespaces/shop/events") == "shop"


@pytest.mark.parametrize(
    "path", ["/", "/v1/namespaces/shop", "/v1/namespaces/shop/events/x", "/v2/namespaces/a/events"]
)
def test_other_paths_are_not_the_ingress(path: str) -> None:
    assert namespace_of(path) is None


def test_an_invalid_namespace_name_is_a_400_that_says_what_a_name_is() -> None:
    with pytest.raises(IngressError) as info:
        namespace_of("/v1/namespaces/Shop_1/events")
    assert info.value.status == 400 and "lower-case" in info.value.message


# -- {"event", "data"} ------------------------------------------------------------------------
def test_json_body_gives_event_and_data_without_an_id() -> None:
    assert parse(JSON, {"event": "User.Created", "data": {"id": 7}}) == Publication("User.Created", {"id": 7}, None)


def test_json_body_with_charset_and_without_data() -> None:
    got = parse({"Content-Type": "application/json; charset=utf-8"}, {"event": "A.B"})
    assert got == Publication("A.B", None, None)


def test_idempotency_key_header_becomes_the_event_id() -> None:
    got = parse({**JSON, "Idempotency-Key": "order-42"}, {"event": "Order.Paid", "data": [1]})
    assert got.event_id == "order-42"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ([1, 2], "must be a JSON object"),
        ({"data": {}}, "event is missing"),
        ({"event": ""}, "event is missing"),
        ({"event": 5}, "event is missing"),
        ({"event": "User.*"}, "invalid event name"),
        ({"event": "user created"}, "invalid event name"),
        ({"event": "1User"}, "invalid event name"),
        ({"event": "A." + "b" * 260}, "invalid event name"),
        ({"event": "A.B", "payload": {}}, "unknown field(s) payload"),
    ],
)
def test_malformed_json_bodies_are_400_with_a_reason(body: Any, says: str) -> None:
    assert says in rejected(JSON, body)


@pytest.mark.parametrize("key", ["", "has space", "x" * 129, "é"])
def test_a_bad_idempotency_key_is_400(key: str) -> None:
    assert "Idempotency-Key" in rejected({**JSON, "Idempotency-Key": key}, {"event": "A.B"})


@pytest.mark.parametrize("content_type", ["", "text/plain", "application/x-www-form-urlencoded"])
def test_unsupported_content_types_are_400_naming_the_accepted_ones(content_type: str) -> None:
    message = rejected({"Content-Type": content_type} if content_type else {}, {"event": "A.B"})
    assert "unsupported content type" in message and "application/cloudevents+json" in message


# -- structured CloudEvents -----------------------------------------------------------------
def structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    message = to_structured_event(event)
    return dict(message.headers), message.body


def test_structured_cloudevent_type_id_and_data() -> None:
    headers, body = structured(cloudevent({"plan": "pro"}, datacontenttype="application/json"))
    assert parse(headers, body) == Publication("User.Created", {"plan": "pro"}, "evt-1")


def test_structured_cloudevent_with_data_base64_of_json() -> None:
    encoded = base64.b64encode(b'{"n": 1}').decode()
    body = {"specversion": "1.0", "type": "A.B", "id": "i", "source": "/s", "data_base64": encoded}
    assert parse({"Content-Type": "application/cloudevents+json"}, body) == Publication("A.B", {"n": 1}, "i")


def test_structured_cloudevent_with_text_data() -> None:
    headers, body = structured(cloudevent("hello", datacontenttype="text/plain"))
    assert parse(headers, body).data == "hello"


def test_structured_cloudevent_without_data_has_null_data() -> None:
    headers, body = structured(cloudevent(None))
    assert parse(headers, body) == Publication("User.Created", None, "evt-1")


def test_structured_cloudevent_with_binary_data_is_400() -> None:
    headers, body = structured(cloudevent(b"\x00\x01", datacontenttype="application/octet-stream"))
    assert "unsupported data content type 'application/octet-stream'" in rejected(headers, body)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"type": None}, "type is missing"),
        ({"type": "user.created!"}, "invalid event name"),
        ({"id": None}, "id is missing"),
        ({"id": "a b"}, "invalid event id"),
        ({"source": None}, "source is missing"),
        ({"specversion": "0.3"}, "specversion must be '1.0'"),
        ({"data_base64": "!!!"}, "not valid base64"),
        ({"data_base64": "e30=", "data": {}}, "not both"),
        ({"datacontenttype": "image/png", "data": "x"}, "unsupported datacontenttype"),
    ],
)
def test_bad_structured_cloudevents_are_400(change: dict[str, Any], says: str) -> None:
    body: dict[str, Any] = {"specversion": "1.0", "type": "A.B", "id": "i", "source": "/s"}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    assert says in rejected({"Content-Type": "application/cloudevents+json"}, body)


def test_batched_cloudevents_are_400() -> None:
    assert "batched" in rejected({"Content-Type": "application/cloudevents-batch+json"}, [])


# -- binary CloudEvents ---------------------------------------------------------------------
def binary(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    message = to_binary_event(event)
    return dict(message.headers), message.body


def test_binary_cloudevent_with_json_data() -> None:
    headers, body = binary(cloudevent({"plan": "pro"}, datacontenttype="application/json"))
    assert parse(headers, body) == Publication("User.Created", {"plan": "pro"}, "evt-1")


def test_binary_cloudevent_with_text_data_and_charset() -> None:
    headers = {"ce-specversion": "1.0", "ce-type": "A.B", "ce-id": "7", "ce-source": "/s"}
    got = parse({**headers, "Content-Type": "text/plain; charset=latin-1"}, "café".encode("latin-1"))
    assert got == Publication("A.B", "café", "7")


def test_binary_cloudevent_with_empty_body_has_null_data() -> None:
    headers = {"ce-specversion": "1.0", "ce-type": "A.B", "ce-id": "7", "ce-source": "/s"}
    assert parse(headers, b"").data is None


@pytest.mark.parametrize(
    ("drop", "says"),
    [("ce-type", "ce-type header is missing"), ("ce-id", "ce-id header is missing"), ("ce-source", "ce-source")],
)
def test_binary_cloudevent_missing_attributes_are_400(drop: str, says: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-type": "A.B", "ce-id": "7", "ce-source": "/s", **JSON}
    del headers[drop]
    assert says in rejected(headers, b"{}")


def test_binary_cloudevent_with_binary_data_is_400() -> None:
    headers = {"ce-specversion": "1.0", "ce-type": "A.B", "ce-id": "7", "ce-source": "/s"}
    assert "unsupported data content type" in rejected({**headers, "Content-Type": "image/png"}, b"\x89PNG")


def test_binary_cloudevent_with_malformed_json_data_is_400() -> None:
    headers = {"ce-specversion": "1.0", "ce-type": "A.B", "ce-id": "7", "ce-source": "/s", **JSON}
    assert "not valid JSON" in rejected(headers, b"{")


# -- object names ---------------------------------------------------------------------------
def test_an_event_id_names_one_object_per_namespace() -> None:
    name = event_object_name("shop", "evt-1")
    assert name == event_object_name("shop", "evt-1")
    assert name != event_object_name("billing", "evt-1") and name != event_object_name("shop", "evt-2")
    assert name.startswith("evt-") and len(name) <= 63 and name == name.lower()


def test_generate_name_prefix_from_the_event_name() -> None:
    assert event_name_prefix("User.Created") == "user-created-"
    assert len(event_name_prefix("A" * 253)) <= 53
