"""Bus mode's controlled path (pure): which webhooks take it, and an Ordered webhook's next turn."""

from __future__ import annotations

import datetime as dt
import json

from webhook_operator.bus.control import (
    EVERYTHING,
    MIN_ANSWER_S,
    ConsumerView,
    answer_time,
    controlled,
    crowded,
    fanned_out_through,
    ordered_turn,
    put_off_turn,
    quickest_answer,
    sending_share,
    slow,
)
from webhook_operator.bus.messages import (
    CONTROLLED_PREFIX,
    Delivery,
    controlled_consumer,
    controlled_subject,
    log_record,
    subject_key,
)
from webhook_operator.bus.requestlog import progress, to_replay
from webhook_operator.delivery.ratelimit import RateLimit
from webhook_operator.index import WebhookState
from webhook_operator.model import WebhookSpec
from webhook_operator.retry import FAILURE_BLOCKED, FAILURE_ERROR, FAILURE_TIMEOUT


def state(**spec: object) -> WebhookState:
    return WebhookState("shop", "hook", "uid-1", 1, WebhookSpec(url="https://x", events=("*",), **spec), {})  # type: ignore[arg-type]


def test_only_rate_limited_or_ordered_webhooks_take_the_controlled_path() -> None:
    assert not controlled(None)
    assert not controlled(state())
    assert controlled(state(ordered=True))
    assert controlled(state(rate_limit=RateLimit(5.0, 3)))


def test_subjects_and_consumer_names_round_trip_names_with_dots() -> None:
    subject = controlled_subject("shop", "billing.v2")
    assert subject == "webhook-operator.controlled.shop.billing~v2"
    assert subject_key(CONTROLLED_PREFIX, subject) == ("shop", "billing.v2")
    assert controlled_consumer("my-shop", "billing.v2") == "controlled_my-shop_billing~v2"
    long = controlled_consumer("n" * 63, "w" * 253)
    assert long.startswith("controlled_") and len(long) == 51  # a file name on the NATS server
    assert controlled_consumer("n" * 63, "w" * 252) != long


def test_an_idle_fan_out_has_fanned_out_everything_else_its_ack_floor_counts() -> None:
    assert fanned_out_through(7, 0, 0) == EVERYTHING
    assert fanned_out_through(7, 2, 0) == 7
    assert fanned_out_through(7, 0, 5) == 7


def test_the_lowest_event_sequence_goes_first_once_nothing_earlier_can_come() -> None:
    quiet = ConsumerView(ack_pending=3, unpulled=0)
    # Stored out of event order (two replicas fanned out side by side): the lowest sequence goes.
    assert ordered_turn([12, 10, 11], quiet, fanned_out=EVERYTHING) == 10
    # Event 9 is not fanned out yet: its delivery may still come, so 10 waits.
    assert ordered_turn([12, 10, 11], quiet, fanned_out=8) is None
    assert ordered_turn([12, 10, 11], quiet, fanned_out=9) == 10
    # A retrying head (nak with a delay) or a dead leader's messages are out: wait for them.
    assert ordered_turn([12, 10, 11], ConsumerView(ack_pending=4, unpulled=0), EVERYTHING) is None
    # Something is left to pull: pull it first, unless the window is full.
    assert ordered_turn([12, 10, 11], ConsumerView(ack_pending=3, unpulled=1), EVERYTHING) is None
    assert ordered_turn([12, 10, 11], ConsumerView(ack_pending=3, unpulled=1), EVERYTHING, window=3) == 10
    assert ordered_turn([], ConsumerView(0, 0), EVERYTHING) is None


DELIVERY = Delivery(
    namespace="shop",
    webhook="hook",
    webhook_uid="uid-1",
    id="msg_a",
    event="User.Created",
    event_id="a",
    created_at="2026-01-02T03:00:10.000Z",
    data={},
    seq=5,
)


def record(delivery: Delivery, outcome: str, time: str, redelivery: str | None = None) -> dict[str, object]:
    if redelivery:
        delivery = Delivery(**{**delivery.__dict__, "redelivery": redelivery})
    payload = log_record(
        delivery,
        outcome=outcome,
        attempts=1,
        time=time,
        status_code=200 if outcome == "Succeeded" else 500,
        duration_ms=1,
        error="",
        response_body="",
    )
    return dict(json.loads(payload))


def test_replay_picks_final_deliveries_of_the_window_in_event_order_and_counts_those_in_flight() -> None:
    since = dt.datetime(2026, 1, 2, 3, 0, 0, tzinfo=dt.UTC)
    old = Delivery(**{**DELIVERY.__dict__, "id": "msg_old", "created_at": "2026-01-02T02:59:59.000Z", "seq": 1})
    failed = Delivery(**{**DELIVERY.__dict__, "id": "msg_b", "event_id": "b", "seq": 4})
    busy = Delivery(**{**DELIVERY.__dict__, "id": "msg_c", "event_id": "c", "seq": 6})
    records = [
        record(old, "Succeeded", "2026-01-02T03:00:01.000Z"),
        record(DELIVERY, "Succeeded", "2026-01-02T03:00:11.000Z"),
        record(failed, "Retrying", "2026-01-02T03:00:11.000Z"),
        record(failed, "Failed", "2026-01-02T03:00:12.000Z"),
        record(busy, "Retrying", "2026-01-02T03:00:13.000Z"),
    ]
    chosen, in_flight = to_replay(records, since, failed_only=False)
    assert [d.id for d in chosen] == ["msg_b", "msg_a"] and in_flight == 1
    assert chosen[1] == DELIVERY  # replayed as recorded: same webhook-id, event and body
    chosen, _ = to_replay(records, since, failed_only=True)
    assert [d.id for d in chosen] == ["msg_b"]
    # A later replay that succeeded is the latest word on that delivery.
    chosen, _ = to_replay([*records, record(failed, "Succeeded", "2026-01-02T03:01:00.000Z", "r1")], since, True)
    assert chosen == []


def test_replay_progress_counts_only_the_records_of_that_request() -> None:
    records = [
        record(DELIVERY, "Succeeded", "2026-01-02T03:00:11.000Z"),
        record(DELIVERY, "Failed", "2026-01-02T03:01:00.000Z", "r1"),
    ]
    assert progress(records, ["msg_a", "msg_b"], "r1") == {"delivered": 0, "failed": 1, "pending": 1}
    assert progress(records, ["msg_a"], "r2") == {"delivered": 0, "failed": 0, "pending": 1}


def test_a_webhook_is_crowded_only_when_it_is_slow_and_what_waits_would_wait_a_second_or_more() -> None:
    # Ten at a time: up to twice that waiting or under way is never put off, however slow.
    assert not crowded(19, 10, answer_s=30.0, typical_s=0.005)
    # A fast endpoint with a queue: 41 waiting, 5 ms answers: 0.16 s of waiting for the next.
    assert not crowded(50, 10, answer_s=0.005, typical_s=0.005)
    # 1 s answers where 5 ms is typical, and 20 waiting: the next waits about a second.
    assert crowded(20, 10, answer_s=1.0, typical_s=0.005)
    assert not crowded(20, 10, answer_s=0.5, typical_s=0.005)
    # Every webhook slow alike (the replica or the receivers' host overloaded): putting off would not help.
    assert not crowded(40, 10, answer_s=1.0, typical_s=0.4)


def test_the_typical_answer_is_the_quickest_webhooks_median_not_a_mean_of_attempts() -> None:
    # Ten slow webhooks crowding out a quick one make most attempts theirs; the quick one still sets it.
    answers = [[1.0, 1.1, 0.9]] * 10 + [[0.004, 0.2, 0.005]]
    assert quickest_answer(answers) == 0.005 and slow(1.0, 0.005)
    # All alike (an overloaded replica): none is slow beside the others.
    alike = [[0.3, 0.35], [0.32, 0.3], [0.31]]
    assert quickest_answer(alike) == 0.31 and not slow(0.35, 0.31)
    assert quickest_answer([]) is None and quickest_answer([[]]) is None


def test_only_answers_and_timeouts_tell_how_slow_a_webhook_is() -> None:
    assert answer_time(0.8, None) == 0.8  # an HTTP answer, whatever its status
    assert answer_time(10.0, FAILURE_TIMEOUT) == 10.0  # a hanging endpoint is slow
    # A refused connection fails in a fraction of a millisecond: counted, it would be the "quickest
    # webhook" and every other one would look slow beside it.
    assert answer_time(0.0002, FAILURE_ERROR) is None and answer_time(0.0, FAILURE_BLOCKED) is None


def test_a_webhook_sends_at_most_its_share_of_the_slots_while_they_are_short() -> None:
    assert sending_share(10, 100, active=3) == 10  # room for all: its own concurrency
    assert sending_share(10, 50, active=11) == 4  # ten slow webhooks and a quick one on 50 slots
    assert sending_share(10, 2, active=50) == 1  # never none


def test_deliveries_put_off_come_back_spaced_at_the_pace_the_webhook_takes_them() -> None:
    # 1 s answers, ten at a time, 30 waiting here: the first comes back after those 20 beyond the ten under
    # way (2 s), then one every 0.1 s.
    first = put_off_turn(100.0, 1.0, 30, 10, last_turn=0.0)
    second = put_off_turn(100.0, 1.0, 30, 10, last_turn=first)
    assert (round(first, 3), round(second - first, 3)) == (102.1, 0.1)
    # Later ones queue behind the last turn even when little waits here any more.
    assert put_off_turn(101.0, 1.0, 0, 10, last_turn=second) == second + 0.1
    # No answer time known yet: spaced by a floor, never all at once.
    assert put_off_turn(0.0, 0.0, 0, 10, last_turn=0.0) == MIN_ANSWER_S / 10
