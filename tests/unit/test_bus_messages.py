"""Bus mode's pure parts: published events, delivery messages, request-log records, health folding, flags."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import ssl
from pathlib import Path

import pytest
import trustme
from nats.js.errors import BadRequestError

from webhook_operator.bus.config import PASSWORD_ENV, BusSettings, connect_options
from webhook_operator.bus.messages import (
    BadMessage,
    Delivery,
    batch_id,
    batch_subject,
    decode_deliveries,
    deliveries_subject,
    derived_event_id,
    encode_batch,
    log_record,
    log_record_id,
    log_subject,
    log_subject_key,
    parse_published,
)
from webhook_operator.bus.requestlog import finished, log_rows, to_redeliver
from webhook_operator.bus.worker import declare_problem, fold_record, now_ms
from webhook_operator.delivery.attempt import AttemptResult
from webhook_operator.index import WebhookIndex, WebhookState
from webhook_operator.model import format_time_ms, now, parse_time, parse_webhook_spec
from webhook_operator.settings import add_run_arguments, settings_from_args
from webhook_operator.signing import build_body

DELIVERY = Delivery(
    namespace="shop",
    webhook="billing.v2",
    webhook_uid="uid-1",
    id="msg_1",
    event="User.Created",
    event_id="evt-1",
    created_at="2026-01-02T03:04:05.678Z",
    data={"name": "zoë"},
)


def test_published_event_is_parsed_from_subject_and_body() -> None:
    got = parse_published("webhook-operator.events.shop", b'{"event": "User.Created", "data": {"id": 1}}')
    assert (got.namespace, got.event, got.data) == ("shop", "User.Created", {"id": 1})
    assert parse_published("webhook-operator.events.shop", b'{"event": "A"}').data is None


@pytest.mark.parametrize(
    ("subject", "payload", "reason"),
    [
        ("webhook-operator.events.shop", b"not json", "json"),
        ("webhook-operator.events.shop", b"\xff\xfe", "json"),
        ("webhook-operator.events.shop", b"[1]", "json"),
        ("webhook-operator.events.shop", b'{"data": {}}', "event"),
        ("webhook-operator.events.shop", b'{"event": "User.*"}', "event"),
        ("webhook-operator.events.shop", b'{"event": 7}', "event"),
        ("webhook-operator.events.shop.extra", b'{"event": "A"}', "subject"),
    ],
)
def test_bad_published_messages_name_their_reason(subject: str, payload: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as caught:
        parse_published(subject, payload)
    assert caught.value.reason == reason


def test_delivery_message_round_trips_and_a_broken_one_is_bad() -> None:
    assert Delivery.decode(DELIVERY.encode()) == DELIVERY
    again = Delivery(**{**DELIVERY.__dict__, "redelivery": "2026-01-02T00:00:00.000000Z"})
    assert Delivery.decode(again.encode()) == again
    with pytest.raises(BadMessage):
        Delivery.decode(b'{"namespace": "shop"}')


def test_delivery_messages_keep_the_data_exactly_as_json_writes_it() -> None:
    # Fan-out encodes the data once per event; the body built from the decoded message is CR mode's.
    payload = '{"event": "A", "data": {"big": 1180591620717411303424, "f": 1e+20, "t": "zo\u00eb \u2028", "n": [0.1]}}'
    published = parse_published("webhook-operator.events.shop", payload.encode())
    message = dataclasses.replace(DELIVERY, data=published.data).encode(published.data_json)
    assert (
        message
        == json.dumps(
            {**json.loads(dataclasses.replace(DELIVERY, data=published.data).encode()), "data": published.data},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
    )
    decoded = Delivery.decode(message)
    expected = json.loads(payload)["data"]
    assert decoded.data == expected and type(decoded.data["big"]) is int
    body = build_body(hook_id="h", event="A", created_at="c", event_id="e", data=decoded.data)
    assert body == build_body(hook_id="h", event="A", created_at="c", event_id="e", data=expected)
    seq = dataclasses.replace(DELIVERY, redelivery="R", seq=7)
    assert json.loads(seq.encode()) == {**json.loads(DELIVERY.encode()), "redelivery": "R", "seq": 7}


def test_a_batch_carries_one_event_for_several_webhooks_and_each_delivery_splices_its_own_message() -> None:
    published = parse_published(
        "webhook-operator.events.shop",
        b'{"event": "User.Created", "data": {"big": 1180591620717411303424, "t": "zo\\u00eb", "q": "\\",\\"data\\":"}}',
    )
    first = dataclasses.replace(DELIVERY, data=published.data, seq=9)
    second = dataclasses.replace(first, webhook="crm", webhook_uid="uid-2", id="msg_2")
    message = encode_batch([first, second], published.data_json)
    deliveries, data = decode_deliveries(message)
    assert deliveries == [first, second] and data == published.data_json
    # Each delivery's own message, for its log record (redeliver, replay), is what fan-out would write for it.
    assert data is not None
    assert [d.encode(data) for d in deliveries] == [first.encode(published.data_json), second.encode()]
    assert decode_deliveries(first.encode()) == ([first], None)
    with pytest.raises(BadMessage):
        Delivery.decode(message)  # a batch is no single delivery
    with pytest.raises(BadMessage):
        decode_deliveries(b'{"namespace": "shop", "event": "A", "eventId": "e", "createdAt": "c", "targets": []}')
    assert batch_subject("shop") == "webhook-operator.deliveries.shop._batch"


def test_batch_ids_are_the_same_for_the_same_deliveries_only() -> None:
    other = dataclasses.replace(DELIVERY, id="msg_2")
    assert batch_id([DELIVERY, other]) == batch_id([other, DELIVERY])  # replicas list subscribers in their order
    assert batch_id([DELIVERY, other]) != batch_id([DELIVERY, dataclasses.replace(other, id="msg_3")])
    assert batch_id([DELIVERY, other]) != batch_id([DELIVERY, dataclasses.replace(other, redelivery="R")])


def test_a_retry_from_a_batch_carries_its_attempts_and_due_time() -> None:
    again = DELIVERY.retry(1, "2026-01-02T03:04:10.000Z")
    assert Delivery.decode(again.encode()) == again
    assert json.loads(again.encode())["after"] == 1 and "after" not in json.loads(DELIVERY.encode())


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'"\\ud800"'])
def test_published_data_no_body_can_carry_is_terminated(data: bytes) -> None:
    # Accepted before, then every attempt failed to build the body and the message came back forever.
    with pytest.raises(BadMessage) as caught:
        parse_published("webhook-operator.events.shop", b'{"event": "A", "data": ' + data + b"}")
    assert caught.value.reason == "json"


def test_subjects_write_dots_of_webhook_names_as_tildes_and_back() -> None:
    assert deliveries_subject("shop", "billing.v2") == "webhook-operator.deliveries.shop.billing~v2"
    assert log_subject("shop", "billing.v2") == "webhook-operator.log.shop.billing~v2"
    assert log_subject_key("webhook-operator.log.shop.billing~v2") == ("shop", "billing.v2")
    assert log_subject_key("webhook-operator.log.shop") is None


def test_derived_event_id_is_stable_per_stream_and_sequence() -> None:
    assert derived_event_id("t0", 5) == derived_event_id("t0", 5)
    assert len({derived_event_id("t0", 5), derived_event_id("t0", 6), derived_event_id("t1", 5)}) == 3


def record(outcome: str, *, time: str, attempts: int = 1, delivery: Delivery = DELIVERY, **extra: object) -> dict:
    body = json.loads(
        log_record(
            delivery,
            outcome=outcome,
            attempts=attempts,
            time=time,
            status_code=extra.pop("status_code", 200 if outcome == "Succeeded" else 500),  # type: ignore[arg-type]
            duration_ms=12,
            error="" if outcome == "Succeeded" else "HTTP 500",
            response_body="x" * 5000,
        )
    )
    return dict(body)


def test_log_records_carry_the_event_only_when_final_and_a_bounded_response() -> None:
    ok = record("Succeeded", time="2026-01-02T03:04:06.000Z")
    bad = record("Failed", time="2026-01-02T03:04:07.000Z")
    retrying = record("Retrying", time="2026-01-02T03:04:05.000Z")
    assert "delivery" not in retrying and len(ok["responseBody"]) == 1024
    # Failed for redeliver, Succeeded too for replay (every final delivery of a window).
    assert Delivery.decode(json.dumps(bad["delivery"]).encode()) == DELIVERY
    assert Delivery.decode(json.dumps(ok["delivery"]).encode()) == DELIVERY


def test_a_final_record_carries_the_delivery_message_as_received() -> None:
    message = b'{"namespace":"shop","webhook":"billing.v2","webhookUid":"uid-1","id":"msg_1","event":"User.Created",'
    message += b'"eventId":"evt-1","createdAt":"2026-01-02T03:04:05.678Z","data": {"name": "zo\xc3\xab"}}'
    delivery = Delivery.decode(message)
    kwargs = {"attempts": 1, "time": "t", "status_code": 200, "duration_ms": 1, "error": "", "response_body": "\ud800?"}
    spliced = json.loads(log_record(delivery, outcome="Succeeded", message=message, **kwargs))  # type: ignore[arg-type]
    encoded = json.loads(log_record(delivery, outcome="Succeeded", **kwargs))  # type: ignore[arg-type]
    assert spliced == encoded and Delivery.decode(json.dumps(spliced["delivery"]).encode()) == delivery
    assert spliced["responseBody"] == "\ud800?", "a text orjson refuses is written by json"
    assert "delivery" not in json.loads(log_record(delivery, outcome="Retrying", message=message, **kwargs))  # type: ignore[arg-type]
    with pytest.raises(BadMessage):
        Delivery.decode(message.decode().encode("utf-16"))  # json.loads would take it; the record could not


def test_record_times_are_format_time_ms() -> None:
    before = format_time_ms(now())
    stamp = now_ms()
    after = format_time_ms(now())
    assert before <= stamp <= after and len(stamp) == len(before) and parse_time(stamp) is not None


def test_record_times_of_given_moments_in_any_order() -> None:
    # Records are written as answers come back: an attempt sent earlier may be recorded after a later one.
    late, early = 1_796_000_001.25, 1_796_000_000.5
    assert now_ms(late) == "2026-11-30T00:53:21.250Z" and now_ms(early) == "2026-11-30T00:53:20.500Z"
    assert now_ms(late) == format_time_ms(dt.datetime.fromtimestamp(late, dt.UTC))


def test_log_record_ids_one_per_attempt_while_retrying_and_one_final_per_delivery() -> None:
    retrying = {log_record_id(DELIVERY, n, "Retrying") for n in (1, 2, 3)}
    assert len(retrying) == 3
    # The same delivery repeated after its replica died between the final record and the ack.
    assert log_record_id(DELIVERY, 3, "Succeeded") == log_record_id(DELIVERY, 4, "Succeeded")
    assert log_record_id(DELIVERY, 3, "Failed") == log_record_id(DELIVERY, 4, "Succeeded")
    again = dataclasses.replace(DELIVERY, redelivery="2026-01-02T03:04:05Z")
    assert log_record_id(again, 1, "Succeeded") != log_record_id(DELIVERY, 1, "Succeeded")
    assert not retrying & {log_record_id(DELIVERY, 1, "Succeeded")}


def test_a_refused_stream_says_what_a_replicated_one_needs() -> None:
    placement = BadRequestError(code=400, err_code=10005, description="no suitable peers for placement")
    text = declare_problem("WEBHOOK_OPERATOR_EVENTS", 3, placement)
    assert "no suitable peers for placement" in text and "--event-bus-stream-replicas 3 needs" in text
    assert "--event-bus-stream-replicas" not in declare_problem("WEBHOOK_OPERATOR_EVENTS", 1, placement)
    other = BadRequestError(code=400, err_code=10052, description="invalid duplicate window")
    assert "--event-bus-stream-replicas" not in declare_problem("WEBHOOK_OPERATOR_EVENTS", 3, other)


def test_log_rows_newest_first_since_and_failed_only() -> None:
    records = [
        record("Retrying", time="2026-01-02T03:00:00.000Z"),
        record("Failed", time="2026-01-02T03:01:00.000Z", attempts=2),
        record("Succeeded", time="2026-01-02T02:00:00.000Z"),
    ]
    since = dt.datetime(2026, 1, 2, 2, 30, tzinfo=dt.UTC)
    rows = log_rows(records, since, failed_only=False)
    assert [r[3] for r in rows] == ["Failed", "Retrying"]
    assert [r[3] for r in log_rows(records, since, failed_only=True)] == ["Failed"]


def test_redelivery_takes_deliveries_whose_latest_final_record_failed() -> None:
    other = Delivery(**{**DELIVERY.__dict__, "id": "msg_2", "webhook": "crm"})
    records = [
        record("Failed", time="2026-01-02T03:00:00.000Z"),
        record("Failed", time="2026-01-02T03:00:00.000Z", delivery=other),
        record("Succeeded", time="2026-01-02T03:05:00.000Z", delivery=other),  # redelivered earlier
    ]
    assert to_redeliver(records, "evt-1") == [DELIVERY]
    assert to_redeliver(records, "evt-unknown") == []
    again = Delivery(**{**DELIVERY.__dict__, "redelivery": "R1"})
    assert finished(records, ["msg_1"], "R1") is None
    done = finished([*records, record("Succeeded", time="2026-01-02T04:00:00.000Z", delivery=again)], ["msg_1"], "R1")
    assert done == {"msg_1": "Succeeded"}


def state(uid: str = "uid-1") -> WebhookState:
    spec = parse_webhook_spec({"url": "https://example.com/h", "events": ["User.Created"]})
    return WebhookState(namespace="shop", name="billing.v2", uid=uid, generation=1, spec=spec, body={})


def test_fold_record_counts_final_outcomes_of_the_same_webhook_only() -> None:
    index = WebhookIndex()
    index.put(state())
    subject = log_subject("shop", "billing.v2")
    assert fold_record(index, subject, json.dumps(record("Succeeded", time="2026-01-02T03:00:00.000Z")).encode())
    assert fold_record(index, subject, json.dumps(record("Failed", time="2026-01-02T03:00:01.000Z")).encode())
    assert not fold_record(index, subject, json.dumps(record("Retrying", time="2026-01-02T03:00:00.000Z")).encode())
    assert not fold_record(index, subject, b"garbage")
    older = json.dumps({**record("Succeeded", time="2026-01-02T03:00:02.000Z"), "delivery": {"data": float("nan")}})
    assert fold_record(index, subject, older.encode()), "NaN in a record's data (orjson refuses it): json reads it"
    other = Delivery(**{**DELIVERY.__dict__, "webhook_uid": "uid-old"})
    stale = record("Succeeded", time="2026-01-02T03:00:00.000Z", delivery=other)
    assert not fold_record(index, subject, json.dumps(stale).encode()), "a webhook deleted and created again"
    got = index.get("shop", "billing.v2")
    assert got is not None and got.health_dirty
    summary = got.health.summary(dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC))
    assert (summary.succeeded, summary.failed) == (2, 1)
    assert got.health.last_status_code == 200


def parse(*argv: str) -> BusSettings | None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv))).event_bus


def test_event_bus_flags() -> None:
    assert parse() is None
    bus = parse(
        "--event-bus", "nats://a:4222", "--event-bus", "nats://b:4222", "--event-bus", "nats://a:4222",
        "--event-bus-dedupe-window", "1h", "--event-bus-log-max-age", "12h", "--event-bus-user", "op",
    )  # fmt: skip
    assert bus is not None
    assert bus.servers == ("nats://a:4222", "nats://b:4222")
    assert (bus.dedupe_window_s, bus.log_max_age_s, bus.user) == (3600.0, 43200.0, "op")
    for bad in (["--event-bus", "http://a"], ["--event-bus", "nats://a", "--event-bus-tls-cert", "c"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_connect_options_read_secrets_from_files_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    options = connect_options(BusSettings(servers=("nats://a:4222",), user="op", password_file=str(password)))
    assert (options["user"], options["password"]) == ("op", "s3cret")
    assert "tls" not in options
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert connect_options(BusSettings(servers=("nats://a",), user="op"))["password"] == "from-env"


def test_connect_options_build_a_tls_context_with_the_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_path, cert_path = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ca.issue_cert("client").private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    options = connect_options(
        BusSettings(servers=("tls://a:4222",), tls_ca=str(ca_path), tls_cert=str(cert_path), tls_key=str(cert_path))
    )
    assert isinstance(options["tls"], ssl.SSLContext)


def test_fold_record_hands_every_attempt_to_auto_disable_and_skips_what_was_never_sent() -> None:
    index = WebhookIndex()
    index.put(state())
    subject = log_subject("shop", "billing.v2")
    seen: list[tuple[int | None, bool]] = []

    def on_attempt(_: WebhookState, result: AttemptResult) -> None:
        seen.append((result.status_code, result.succeeded))

    retry = record("Retrying", time="2026-01-02T03:00:00.000Z", status_code=410)
    assert not fold_record(index, subject, json.dumps(retry).encode(), on_attempt=on_attempt)
    ok = record("Succeeded", time="2026-01-02T03:00:01.000Z", attempts=2)
    assert fold_record(index, subject, json.dumps(ok).encode(), on_attempt=on_attempt)
    never = record("Failed", time="2026-01-02T03:00:02.000Z", attempts=0, status_code=None)
    assert not fold_record(index, subject, json.dumps(never).encode(), on_attempt=on_attempt)
    assert seen == [(410, False), (200, True)]
    got = index.get("shop", "billing.v2")
    assert got is not None
    summary = got.health.summary(dt.datetime(2026, 1, 2, 3, 5, tzinfo=dt.UTC))
    assert (summary.succeeded, summary.failed) == (1, 0)
