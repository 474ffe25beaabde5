"""Fair global slots and events parked outside memory (delivery/queues.py)."""

from __future__ import annotations

import asyncio

import pytest

from webhook_operator.delivery.queues import FairSlots, ParkedEvents, fair_share, next_key


# -- the fairness decision -----------------------------------------------------------------------
def test_fair_share_leaves_room_for_one_more_webhook_and_is_at_least_one() -> None:
    assert fair_share(100, 11) == 8
    assert fair_share(100, 1) == 50
    assert fair_share(3, 10) == 1
    assert fair_share(10, 0) == 10


def test_any_key_may_take_a_slot_while_more_than_the_reserve_is_free() -> None:
    held = {"slow": 50}
    assert next_key(["slow", "fast"], held, free=50, capacity=100, reserve=10) == "slow"
    # Even alone, a webhook leaves the reserve free.
    assert next_key(["slow"], {"slow": 89}, free=11, capacity=100, reserve=10) == "slow"
    assert next_key(["slow"], {"slow": 90}, free=10, capacity=100, reserve=10) is None


def test_past_the_reserve_a_key_over_its_share_is_passed_over() -> None:
    # Ten hanging webhooks hold 9 slots each; one more webhook arrives with 10 slots left.
    held = {f"slow{i}": 9 for i in range(10)}
    order = [*held, "fast"]
    assert next_key(order, held, free=10, capacity=100, reserve=10) == "fast"
    # With nobody under its share waiting, the reserve stays free.
    assert next_key(list(held), held, free=10, capacity=100, reserve=10) is None


def test_no_free_slot_no_key() -> None:
    assert next_key(["a"], {}, free=0, capacity=1, reserve=0) is None
    assert next_key([], {}, free=5, capacity=5, reserve=0) is None


# -- FairSlots -----------------------------------------------------------------------------------
async def test_slots_are_granted_round_robin_over_keys_not_first_come_first_served() -> None:
    slots: FairSlots[str] = FairSlots(1)
    await slots.acquire("holder")
    granted: list[str] = []

    async def take(key: str) -> None:
        await slots.acquire(key)
        granted.append(key)
        slots.release(key)

    # Four attempts of a busy webhook queue before one of a quiet webhook.
    tasks = [asyncio.create_task(take(key)) for key in ["busy", "busy", "busy", "busy", "quiet"]]
    await asyncio.sleep(0)
    slots.release("holder")
    await asyncio.gather(*tasks)

    assert granted == ["busy", "quiet", "busy", "busy", "busy"]
    assert slots.free == 1 and slots.waiting == 0


async def test_a_hanging_webhook_cannot_take_the_reserved_slots() -> None:
    slots: FairSlots[str] = FairSlots(10, reserve=2)
    for _ in range(8):
        await slots.acquire("hanging")  # 8 of 10 held, 2 left: the reserve
    blocked = asyncio.create_task(slots.acquire("hanging"))
    await asyncio.sleep(0.01)
    assert not blocked.done(), "a webhook over its share must not take the last slots"

    await asyncio.wait_for(slots.acquire("other"), 1)  # another webhook still gets one at once
    assert slots.held("other") == 1 and slots.held("hanging") == 8
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert slots.waiting == 0


async def test_a_waiter_cancelled_after_its_grant_hands_the_slot_on() -> None:
    slots: FairSlots[str] = FairSlots(1)
    await slots.acquire("a")
    first = asyncio.create_task(slots.acquire("b"))
    second = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    slots.release("a")  # granted to b ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert slots.held("c") == 1 and slots.free == 0


# -- ParkedEvents --------------------------------------------------------------------------------
def test_parked_events_come_back_in_due_order() -> None:
    parked = ParkedEvents()
    parked.park("u2", "ns", "e2", 20.0)
    parked.park("u1", "ns", "e1", 10.0)
    assert len(parked) == 2 and "u1" in parked
    assert parked.next_due() == 10.0
    assert parked.pop_due(5.0) is None
    woken = parked.pop_due(15.0)
    assert woken is not None and woken[0] == "u1" and woken[1].name == "e1"
    assert parked.pop_due(15.0) is None
    assert parked.pop_due(25.0) is not None
    assert len(parked) == 0 and parked.next_due() is None


def test_an_event_woken_by_its_webhook_is_not_woken_again_by_its_due_time() -> None:
    parked = ParkedEvents()
    parked.park("u1", "ns", "e1", 30.0, busy=[("ns", "slow")])
    parked.park("u2", "ns", "e2", 30.0, busy=[("ns", "slow")])
    woken = parked.pop_busy(("ns", "slow"))
    assert woken is not None and woken[0] == "u1"  # the longest-waiting first
    assert [uid for uid, _ in iter(lambda: parked.pop_due(31.0), None)] == ["u2"]
    assert parked.pop_busy(("ns", "slow")) is None


def test_parking_again_replaces_the_earlier_entry() -> None:
    parked = ParkedEvents()
    parked.park("u1", "ns", "e1", 10.0)
    parked.park("u1", "ns", "e1", 50.0)
    assert len(parked) == 1
    assert parked.pop_due(20.0) is None
    assert parked.next_due() == 50.0
    assert parked.discard("u1") is not None and parked.next_due() is None


def test_stale_heap_entries_are_compacted() -> None:
    parked = ParkedEvents()
    for i in range(3000):
        parked.park("u", "ns", "e", float(i))
    assert len(parked) == 1
    assert len(parked._heap) < 2000


def test_releasing_a_key_makes_its_events_due_now_once_each() -> None:
    parked = ParkedEvents()
    parked.park("u1", "ns", "e1", 500.0, busy=[("rate-limit", "ns", "hook")])
    parked.park("u2", "ns", "e2", 900.0, busy=[("rate-limit", "ns", "hook")])
    parked.park("u3", "ns", "e3", 900.0, busy=[("ns", "other")])
    assert parked.release(("rate-limit", "ns", "hook"), 10.0) == 2
    assert sorted(uid for uid, _ in iter(lambda: parked.pop_due(10.0), None)) == ["u1", "u2"]
    assert parked.pop_due(1000.0) is not None and parked.pop_due(1000.0) is None  # u3 only; no stale repeats
    assert parked.release(("rate-limit", "ns", "hook"), 10.0) == 0
