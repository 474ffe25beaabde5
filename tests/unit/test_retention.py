"""Which completed WebhookEvents are deleted and when: TTL by outcome, the per-namespace cap, one plan per uid."""

from __future__ import annotations

from webhook_operator.delivery.retention import Due, Retention

T0 = 1_800_000_000.0


def retention(ttl: float = 60.0, failed_ttl: float = 3600.0, cap: int = 0) -> Retention:
    return Retention(ttl_s=ttl, failed_ttl_s=failed_ttl, max_per_namespace=cap)


def drain(plan: Retention, at: float) -> list[Due]:
    due = []
    while (item := plan.pop_due(at)) is not None:
        due.append(item)
    return due


def test_delivered_and_failed_events_have_their_own_ttl() -> None:
    plan = retention(ttl=60, failed_ttl=3600)
    for uid, phase in [("d", "Delivered"), ("n", "NoSubscribers"), ("p", "PartiallyFailed"), ("f", "Failed")]:
        plan.completed(uid, "shop", f"event-{uid}", phase, T0)

    assert drain(plan, T0 + 59) == []
    assert {d.uid for d in drain(plan, T0 + 60)} == {"d", "n"}
    assert drain(plan, T0 + 3599) == []
    assert {d.uid for d in drain(plan, T0 + 3600)} == {"p", "f"}


def test_ttl_0_keeps_events_of_that_outcome() -> None:
    plan = retention(ttl=0, failed_ttl=60)
    plan.completed("d", "shop", "event-d", "Delivered", T0)
    plan.completed("f", "shop", "event-f", "Failed", T0)

    assert [d.uid for d in drain(plan, T0 + 10**9)] == ["f"]
    assert plan.counted("shop") == 1


def test_seeing_a_completed_event_again_adds_no_entry() -> None:
    plan = retention()
    for _ in range(100):
        plan.completed("d", "shop", "event-d", "Delivered", T0)

    assert plan.heap_size == 1 and plan.counted("shop") == 1
    assert drain(plan, T0 + 60) == [Due("d", "shop", "event-d")]


def test_a_later_completion_replaces_the_plan() -> None:
    plan = retention()
    plan.completed("d", "shop", "event-d", "Failed", T0)
    plan.forget("d")  # redelivery starts
    plan.completed("d", "shop", "event-d", "Delivered", T0 + 500)

    assert drain(plan, T0 + 559) == []
    assert drain(plan, T0 + 560) == [Due("d", "shop", "event-d")]
    assert drain(plan, T0 + 3600) == []  # the Failed plan is void


def test_the_cap_deletes_the_oldest_completed_events_of_that_namespace_only() -> None:
    plan = retention(ttl=0, failed_ttl=0, cap=3)
    for i in [4, 1, 3, 0, 2]:  # seen out of order, as a list returns them
        plan.completed(f"shop-{i}", "shop", f"event-{i}", "Failed" if i % 2 else "Delivered", T0 + i)
    for i in range(3):
        plan.completed(f"billing-{i}", "billing", f"event-{i}", "Delivered", T0 - 100 + i)

    due = drain(plan, T0)

    assert sorted(d.uid for d in due) == ["shop-0", "shop-1"]
    assert plan.counted("shop") == 3 and plan.counted("billing") == 3


def test_events_deleted_by_someone_else_free_their_place_under_the_cap() -> None:
    plan = retention(ttl=0, failed_ttl=0, cap=2)
    plan.completed("a", "shop", "event-a", "Delivered", T0)
    plan.completed("b", "shop", "event-b", "Delivered", T0 + 1)
    plan.forget("a")  # DELETED seen

    plan.completed("c", "shop", "event-c", "Delivered", T0 + 2)

    assert drain(plan, T0 + 10**9) == []
    assert plan.counted("shop") == 2


def test_a_due_event_is_counted_no_longer() -> None:
    plan = retention(ttl=60, cap=2)
    plan.completed("a", "shop", "event-a", "Delivered", T0)
    plan.completed("b", "shop", "event-b", "Delivered", T0 + 30)

    assert drain(plan, T0 + 60) == [Due("a", "shop", "event-a")]
    plan.completed("c", "shop", "event-c", "Delivered", T0 + 61)

    assert plan.counted("shop") == 2
    assert drain(plan, T0 + 61) == []


def test_memory_stays_bounded_while_events_come_and_go() -> None:
    plan = retention(ttl=60, failed_ttl=60, cap=50)
    for i in range(20_000):
        plan.completed(f"u{i}", "shop", f"event-{i}", "Delivered", T0 + i)
        plan.completed(f"u{i}", "shop", f"event-{i}", "Delivered", T0 + i)  # the watch echo
        if i % 3 == 0:
            plan.forget(f"u{i}")  # deleted by someone else
        drain(plan, T0 + i)

    assert plan.counted("shop") <= 50
    assert plan.heap_size < 2 * 60 + 300
    assert len(plan._oldest["shop"]) < 2 * 50 + 300
