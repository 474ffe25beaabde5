"""spec.ordering: the pure gate that says which delivery of a webhook goes next."""

from __future__ import annotations

from webhook_operator.delivery.ordering import OrderingGate, ParkedInOrder, order_key

HOOK = ("ns", "hook", "uid-1")
OTHER = ("ns", "other", "uid-2")


def test_head_is_the_earliest_creation_then_the_name() -> None:
    gate = OrderingGate()
    late = order_key("2026-01-01T00:00:02Z", "ns", "a")
    b = order_key("2026-01-01T00:00:01Z", "ns", "b")
    a = order_key("2026-01-01T00:00:01Z", "ns", "a")
    for key in (late, b, a):  # arrival order is not creation order (a list is sorted by name)
        gate.add(HOOK, key)
    assert gate.head(HOOK) == a
    assert gate.may_attempt(HOOK, a)
    assert not gate.may_attempt(HOOK, b)
    assert gate.blocked(HOOK) == 2
    gate.remove(HOOK, a)
    assert gate.may_attempt(HOOK, b)
    gate.remove(HOOK, b)
    assert gate.head(HOOK) == late


def test_one_attempt_at_a_time_even_when_an_earlier_event_comes_back() -> None:
    gate = OrderingGate()
    newer = order_key("2026-01-01T00:00:05Z", "ns", "n")
    older = order_key("2026-01-01T00:00:01Z", "ns", "o")
    gate.add(HOOK, newer)
    assert gate.may_attempt(HOOK, newer)
    gate.attempt_started(HOOK)
    gate.add(HOOK, older)  # a redelivery of an older event while the newer one is being sent
    assert gate.head(HOOK) == older
    assert not gate.may_attempt(HOOK, older)  # waits for the attempt under way
    gate.attempt_ended(HOOK)
    assert gate.may_attempt(HOOK, older)


def test_webhooks_are_independent_and_adding_twice_is_harmless() -> None:
    gate = OrderingGate()
    key = order_key("2026-01-01T00:00:01Z", "ns", "a")
    gate.add(HOOK, key)
    gate.add(HOOK, key)
    gate.add(OTHER, order_key("2026-01-01T00:00:09Z", "ns", "z"))
    assert gate.blocked(HOOK) == 0
    gate.attempt_started(HOOK)
    assert gate.may_attempt(OTHER, order_key("2026-01-01T00:00:09Z", "ns", "z"))
    gate.remove(HOOK, key)
    gate.remove(HOOK, key)
    assert gate.head(HOOK) is None
    assert not gate.may_attempt(HOOK, key)


def test_a_position_counts_the_open_deliveries_before_a_key() -> None:
    gate = OrderingGate()
    hook = ("ns", "hook", "uid-1")
    for second in (3, 1, 2):
        gate.add(hook, order_key(f"2026-12-06T00:00:0{second}Z", "ns", f"e{second}"))
    assert gate.position(hook, order_key("2026-12-06T00:00:01Z", "ns", "e1")) == 0
    assert gate.position(hook, order_key("2026-12-06T00:00:03Z", "ns", "e3")) == 2
    assert gate.first(hook, 2) == [order_key(f"2026-12-06T00:00:0{s}Z", "ns", f"e{s}") for s in (1, 2)]
    assert gate.position(("ns", "other", "uid-2"), order_key("x", "ns", "e")) == 0


def test_parked_places_are_found_by_key_and_forgotten_by_uid() -> None:
    parked = ParkedInOrder()
    hook, other = ("ns", "hook", "uid-1"), ("ns", "other", "uid-2")
    key = order_key("2026-12-06T00:00:01Z", "ns", "e1")
    parked.add("evt-1", hook, key)
    parked.add("evt-1", other, key)
    parked.add("evt-1", hook, key)  # twice: one place
    assert len(parked) == 1 and parked.uid_at(hook, key) == "evt-1" and parked.uids_of(other) == ["evt-1"]
    assert sorted(parked.webhooks()) == [hook, other] and parked.holds(hook)
    assert parked.pop("evt-1") == [(hook, key), (other, key)]
    assert len(parked) == 0 and parked.webhooks() == [] and parked.uid_at(hook, key) is None
    assert not parked.holds(hook)
    assert parked.pop("evt-1") == []
