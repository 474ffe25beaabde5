"""Retention: completed WebhookEvents are deleted by outcome (`--event-ttl`, `--failed-event-ttl`) and beyond
`--max-completed-events` per namespace (oldest first); health figures do not depend on them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fixtures import StartOperator
from tests.support.kube_helpers import (
    KubectlFn,
    Manifest,
    apply,
    create,
    event_manifest,
    get,
    get_or_none,
    send_event,
    verify_received,
    wait_event_final,
    wait_ready,
    wait_until,
    webhook_manifest,
)
from tests.support.receiver import Receiver, Reply
from webhook_operator.model import parse_time

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def every_request_is_signed(kubectl: KubectlFn, namespace: str, receiver: Receiver) -> Iterator[None]:
    """Whatever a test checks, every request its receiver got must verify as a receiver verifies it."""
    yield
    verify_received(kubectl, namespace, receiver.received())


def add_webhook(
    kubectl: KubectlFn,
    namespace: str,
    receiver: Receiver,
    name: str = "hook",
    events: tuple[str, ...] = ("User.Created",),
) -> None:
    apply(kubectl, namespace, webhook_manifest(name, receiver.url(f"/{name}"), list(events)))
    wait_ready(kubectl, namespace, name)


def completion(event: Manifest) -> float:
    completed = parse_time(event["status"]["completionTime"])
    assert completed is not None
    return completed.timestamp()


def wait_gone(kubectl: KubectlFn, namespace: str, name: str, timeout: float = 20.0) -> float:
    """When the event was first seen to be gone."""
    wait_until(
        lambda: get_or_none(kubectl, namespace, f"webhookevent/{name}") is None,
        timeout=timeout,
        interval=0.1,
        what=f"webhookevent/{name} to be deleted",
    )
    return time.time()


def test_completed_events_are_deleted_once_the_event_ttl_has_passed(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "2s", "--failed-event-ttl", "2s")
    receiver.script("/broken", Reply(400))
    add_webhook(kubectl, namespace, receiver)
    add_webhook(kubectl, namespace, receiver, "broken", ("User.Deleted",))

    for event_name, phase in [("User.Created", "Delivered"), ("User.Deleted", "Failed"), ("Ping", "NoSubscribers")]:
        name = create(kubectl, namespace, event_manifest(event_name))
        final = wait_event_final(kubectl, namespace, name)
        seen_final = time.time()
        gone = wait_gone(kubectl, namespace, name)

        assert final["status"]["phase"] == phase
        # completionTime has whole seconds, so it is up to 1 s earlier than the operator's own clock.
        lived = gone - completion(final)
        assert 1.9 <= lived <= 6.0, f"{phase} event deleted {lived:.1f}s after completionTime"
        assert gone - seen_final >= 0.5, f"{phase} event deleted too soon after completion"


def test_completed_events_found_at_startup_are_deleted_by_their_completion_time(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    keeping = start_operator(namespace, "--event-ttl", "0")
    add_webhook(kubectl, namespace, receiver)
    event = send_event(kubectl, namespace, "User.Created")
    keeping.stop()
    wait_until(lambda: time.time() > completion(event) + 2.5, what="the TTL to pass while no operator runs")

    start_operator(namespace, "--event-ttl", "2s")

    wait_gone(kubectl, namespace, event["metadata"]["name"], timeout=15)


def test_event_ttl_0_keeps_completed_events(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "0")
    add_webhook(kubectl, namespace, receiver)

    event = send_event(kubectl, namespace, "User.Created")
    # Longer than the 2 s TTL that the tests above see honoured within about a second.
    time.sleep(4)

    kept = get_or_none(kubectl, namespace, f"webhookevent/{event['metadata']['name']}")
    assert kept is not None and kept["status"]["phase"] == "Delivered"


def test_failed_events_are_kept_for_the_failed_event_ttl_and_delivered_ones_for_the_event_ttl(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "2s", "--failed-event-ttl", "7s")
    receiver.script("/broken", Reply(400))
    add_webhook(kubectl, namespace, receiver)
    add_webhook(kubectl, namespace, receiver, "broken", ("User.Deleted",))

    delivered = send_event(kubectl, namespace, "User.Created")
    failed = send_event(kubectl, namespace, "User.Deleted")
    delivered_gone = wait_gone(kubectl, namespace, delivered["metadata"]["name"])

    assert failed["status"]["phase"] == "Failed"
    assert get_or_none(kubectl, namespace, f"webhookevent/{failed['metadata']['name']}") is not None
    failed_gone = wait_gone(kubectl, namespace, failed["metadata"]["name"])
    assert 1.9 <= delivered_gone - completion(delivered) <= 6.0
    assert 6.9 <= failed_gone - completion(failed) <= 11.0


def names_of_events(kubectl: KubectlFn, namespace: str) -> set[str]:
    listed = kubectl("get", "webhookevents", "-n", namespace, "-o", "jsonpath={.items[*].metadata.name}").stdout
    return set(listed.split())


def test_the_per_namespace_cap_deletes_the_oldest_completed_events_and_never_one_in_flight(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    start_operator(namespace, "--event-ttl", "0", "--failed-event-ttl", "0", "--max-completed-events", "3")
    receiver.script("/broken", Reply(400))
    receiver.script("/slow", Reply(503))
    add_webhook(kubectl, namespace, receiver)
    add_webhook(kubectl, namespace, receiver, "broken", ("User.Deleted",))
    slow_retry = {"maxRetries": 3, "backoffSeconds": 600, "maxBackoffSeconds": 600, "timeoutSeconds": 5}
    apply(kubectl, namespace, webhook_manifest("slow", receiver.url("/slow"), ["Order.Shipped"], retry=slow_retry))
    wait_ready(kubectl, namespace, "slow")
    # The oldest event of all, still being delivered: it is not completed, so the cap never takes it.
    in_flight = create(kubectl, namespace, event_manifest("Order.Shipped"))
    wait_until(
        lambda: (
            (get_or_none(kubectl, namespace, f"webhookevent/{in_flight}") or {}).get("status", {}).get("phase")
            == "Delivering"
        ),
        what="the 503 event to wait for its retry",
    )

    completed: list[str] = []
    for event_name in ["User.Created", "User.Deleted", "Ping", "User.Created", "User.Deleted"]:
        completed.append(send_event(kubectl, namespace, event_name)["metadata"]["name"])
        time.sleep(1.1)  # completionTime has whole seconds: one per event, so "oldest" is well defined

    expected = {in_flight, *completed[-3:]}
    wait_until(lambda: names_of_events(kubectl, namespace) == expected, what=f"only {sorted(expected)} to remain")
    time.sleep(1)  # nothing more goes
    assert names_of_events(kubectl, namespace) == expected
    assert get(kubectl, namespace, f"webhookevent/{in_flight}")["status"]["phase"] == "Delivering"


def test_health_figures_stay_exact_when_every_event_is_deleted(
    kubectl: KubectlFn, namespace: str, receiver: Receiver, start_operator: StartOperator
) -> None:
    operator = start_operator(namespace, "--event-ttl", "1s", "--failed-event-ttl", "1s")
    receiver.script("/hook", Reply(200), Reply(200), Reply(500), Reply(200), Reply(400))
    apply(
        kubectl,
        namespace,
        webhook_manifest("hook", receiver.url("/hook"), ["User.Created"], retry={"maxRetries": 0}),
    )
    wait_ready(kubectl, namespace, "hook")

    # Only created: with a 1 s TTL an event may be gone before a read would see it final.
    names = [create(kubectl, namespace, event_manifest("User.Created")) for _ in range(5)]

    def health() -> dict[str, Any]:
        return dict(get(kubectl, namespace, "webhook/hook")["status"].get("health") or {})

    flushed = wait_until(lambda: (h := health()).get("requests") == 5 and h, what="health of 5 requests")
    for name in names:
        wait_gone(kubectl, namespace, name)
    assert names_of_events(kubectl, namespace) == set()
    time.sleep(2.5)  # past a health flush
    after_deletion = health()
    operator.stop()
    start_operator(namespace, "--event-ttl", "1s", "--failed-event-ttl", "1s")
    time.sleep(2.5)

    for figures in (flushed, after_deletion, health()):
        assert (figures["requests"], figures["succeeded"], figures["failed"]) == (5, 3, 2)
        assert figures["successRate"] == "60.00%"
